"""Records and constants of QEMU 7.2's main migration stream (multifd layer).

The main channel is one byte stream: ``QEVM`` v3, the CONFIGURATION (machine name), then
sections (START/PART/END/FULL, each closed by a footer), EOF and the VMDESCRIPTION JSON.
``MainStreamDecoder`` turns it into the records below and ``MainStreamEncoder`` builds it.
``SectionSpec`` describes a section this side knows; QEMU's three (``timer``, ``ram``,
``globalstate``) are in ``QEMU_SECTIONS``. A migemu-only section is added by giving the
decoder and encoder one more spec (QEMU refuses unknown names cleanly, so a migemu-only
section must only be sent to migemu).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migemu.multifd.mainstream.reader import Reader

# File header and top-level record types (migration/savevm.h).
FILE_MAGIC = 0x5145564D
FILE_VERSION = 3
FILE_VERSION_COMPAT = 2

VM_EOF = 0x00
VM_SECTION_START = 0x01
VM_SECTION_PART = 0x02
VM_SECTION_END = 0x03
VM_SECTION_FULL = 0x04
VM_SUBSECTION = 0x05
VM_VMDESCRIPTION = 0x06
VM_CONFIGURATION = 0x07
VM_COMMAND = 0x08
VM_SECTION_FOOTER = 0x7E

# RAM record word flags (migration/ram.c), in the low 12 bits of the be64 word.
RAM_FLAG_FULL = 0x001
RAM_FLAG_ZERO = 0x002
RAM_FLAG_MEM_SIZE = 0x004
RAM_FLAG_PAGE = 0x008
RAM_FLAG_EOS = 0x010
RAM_FLAG_CONTINUE = 0x020
RAM_FLAG_XBZRLE = 0x040
RAM_FLAG_HOOK = 0x080
RAM_FLAG_COMPRESS_PAGE = 0x100

# QEMU's section ids for -M none (registration order). Never give "ram" id 0: PART/END
# records resolve ids by searching handlers whose load id starts at 0, i.e. "timer".
TIMER_SECTION_ID = 0
RAM_SECTION_ID = 2
GLOBALSTATE_SECTION_ID = 4

COMMAND_OPEN_RETURN_PATH = 1
COMMAND_PING = 2

GLOBALSTATE_RUNSTATE_SIZE = 100

# RunState names of QEMU 7.2; globalstate must carry one of them.
RUN_STATES = frozenset(
    (
        "debug inmigrate internal-error io-error paused postmigrate prelaunch finish-migrate "
        "restore-vm running save-vm shutdown suspended watchdog guest-panicked colo"
    ).split()
)


def _vmdesc_none() -> bytes:
    devices = [
        {
            "name": "timer",
            "instance_id": 0,
            "vmsd_name": "timer",
            "version": 2,
            "fields": [
                {"name": "cpu_ticks_offset", "type": "int64", "size": 8},
                {"name": "unused", "type": "unused_buffer", "size": 8},
                {"name": "cpu_clock_offset", "type": "int64", "size": 8},
            ],
        },
        {
            "name": "globalstate",
            "instance_id": 0,
            "vmsd_name": "globalstate",
            "version": 1,
            "fields": [
                {"name": "size", "type": "uint32", "size": 4},
                {"name": "runstate", "type": "buffer", "size": 100},
            ],
        },
    ]
    return json.dumps({"page_size": 4096, "devices": devices}).encode()


# The exact 486-byte VMDESCRIPTION QEMU 7.2 sends for -M none without icount.
VMDESC_MACHINE_NONE: bytes = _vmdesc_none()


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Configuration:
    """File header plus CONFIGURATION. ``subsections`` are the optional
    ``configuration/...`` subsections as (name, version, raw body)."""

    machine: str
    subsections: tuple[tuple[str, int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class SectionStart:
    """SECTION_START (type 1) or SECTION_FULL (type 4) header; ``full`` tells which."""

    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    full: bool = False


@dataclass(frozen=True, slots=True)
class SectionPart:
    """SECTION_PART (type 2) or SECTION_END (type 3) header; ``end`` tells which.
    ``idstr`` is the section it resolved to."""

    section_id: int
    idstr: str
    end: bool = False


@dataclass(frozen=True, slots=True)
class SectionFooter:
    """The ``7e`` footer closing the body of section ``section_id``."""

    section_id: int
    idstr: str


@dataclass(frozen=True, slots=True)
class RamMemSize:
    """RAM block list (MEM_SIZE): total bytes and (block name, used length) pairs."""

    total: int
    blocks: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class RamZero:
    """A page filled with ``fill`` (QEMU only sends 0) at ``offset`` in ``block``."""

    block: str
    offset: int
    fill: int = 0


@dataclass(frozen=True, slots=True)
class RamPage:
    """A raw 4 KiB page at ``offset`` in ``block``."""

    block: str
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RamEOS:
    """End of a RAM section's data; with multifd, a sync point: wait for one SYNC packet on
    every channel before applying anything that follows."""


@dataclass(frozen=True, slots=True)
class TimerState:
    """The ``timer`` section body; ``subsections`` as (name, version, raw fields)."""

    cpu_ticks_offset: int
    cpu_clock_offset: int
    subsections: tuple[tuple[str, int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class GlobalState:
    """The ``globalstate`` body: the source's runstate at completion."""

    runstate: str


@dataclass(frozen=True, slots=True)
class SectionData:
    """The body of a FULL section handled by a custom ``SectionSpec.parse_body``."""

    idstr: str
    value: object


@dataclass(frozen=True, slots=True)
class Command:
    """A COMMAND record (type 8): ``cmd`` and its raw ``data``."""

    cmd: int
    data: bytes


@dataclass(frozen=True, slots=True)
class VMEOF:
    """EOF (type 0): the device state is complete."""


@dataclass(frozen=True, slots=True)
class VMDescription:
    """What followed EOF: the JSON (``json``), or ``None`` when the next byte was not ``06``
    (``got`` holds it; QEMU prints "Expected vmdescription section, but got %d" and still
    succeeds) or the connection ended (``got`` 0, as QEMU reads it)."""

    json: bytes | None
    got: int = VM_VMDESCRIPTION


Record = (
    Configuration
    | SectionStart
    | SectionPart
    | SectionFooter
    | RamMemSize
    | RamZero
    | RamPage
    | RamEOS
    | TimerState
    | GlobalState
    | SectionData
    | Command
    | VMEOF
    | VMDescription
)


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """A section this side can load. ``kind`` is ``"ram"``, ``"timer"``, ``"globalstate"`` or
    ``"custom"``; a custom FULL section gives ``parse_body(reader) -> value``, which reads its
    body from a ``Reader`` (raising ``NeedMore`` through it is fine) and becomes a
    ``SectionData`` record."""

    idstr: str
    instance_id: int
    version_id: int
    minimum_version_id: int
    kind: str
    parse_body: Callable[[Reader], object] | None = field(default=None, compare=False)


QEMU_SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("timer", 0, 2, 1, "timer"),
    SectionSpec("ram", 0, 4, 4, "ram"),
    SectionSpec("globalstate", 0, 1, 1, "globalstate"),
)
