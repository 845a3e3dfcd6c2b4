"""Encoder of QEMU 7.2's main migration stream (multifd layer).

Free functions build each piece; ``MainStreamEncoder`` strings them together the way a 7.2
source does (sender rules, reference notes §12): header and configuration, ``ram`` START (id 2,
v4: MEM_SIZE, EOS), PARTs and an END each closed by EOS, ``timer`` (id 0) and ``globalstate``
(id 4) FULL sections, EOF and the VMDESCRIPTION. It remembers the last block named, across
sections, and uses CONTINUE after it like QEMU. Before writing an EOS (``ram_close``) the
caller must have had every multifd channel write its SYNC packet for that sync point.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from migemu.multifd.constants import PAGE_SIZE
from migemu.multifd.mainstream.records import (
    FILE_MAGIC,
    FILE_VERSION,
    GLOBALSTATE_RUNSTATE_SIZE,
    GLOBALSTATE_SECTION_ID,
    RAM_FLAG_CONTINUE,
    RAM_FLAG_EOS,
    RAM_FLAG_MEM_SIZE,
    RAM_FLAG_PAGE,
    RAM_FLAG_ZERO,
    RAM_SECTION_ID,
    TIMER_SECTION_ID,
    VM_COMMAND,
    VM_CONFIGURATION,
    VM_EOF,
    VM_SECTION_END,
    VM_SECTION_FOOTER,
    VM_SECTION_FULL,
    VM_SECTION_PART,
    VM_SECTION_START,
    VM_VMDESCRIPTION,
    VMDESC_MACHINE_NONE,
)

_PAGE_ALIGN = PAGE_SIZE - 1
_ZERO_CONTINUE = struct.Struct(">QB")
_U64 = struct.Struct(">Q")


def _str8(text: str) -> bytes:
    raw = text.encode("latin-1")
    if len(raw) > 255:
        raise ValueError(f"{text!r} is longer than 255 bytes")
    return bytes((len(raw),)) + raw


def encode_file_header(machine: str = "none") -> bytes:
    """``QEVM``, version 3 and the CONFIGURATION record (no subsections)."""
    name = machine.encode("latin-1")
    return struct.pack(">IIBI", FILE_MAGIC, FILE_VERSION, VM_CONFIGURATION, len(name)) + name


def encode_section_start(
    section_id: int, idstr: str, instance_id: int, version_id: int, *, full: bool = False
) -> bytes:
    kind = VM_SECTION_FULL if full else VM_SECTION_START
    return (
        struct.pack(">BI", kind, section_id)
        + _str8(idstr)
        + struct.pack(">II", instance_id, version_id)
    )


def encode_section_part(section_id: int, *, end: bool = False) -> bytes:
    return struct.pack(">BI", VM_SECTION_END if end else VM_SECTION_PART, section_id)


def encode_section_footer(section_id: int) -> bytes:
    return struct.pack(">BI", VM_SECTION_FOOTER, section_id)


def encode_section_full(
    section_id: int, idstr: str, instance_id: int, version_id: int, body: bytes
) -> bytes:
    """A whole SECTION_FULL: header, ``body``, footer (also for migemu-only sections)."""
    return (
        encode_section_start(section_id, idstr, instance_id, version_id, full=True)
        + body
        + encode_section_footer(section_id)
    )


def encode_ram_mem_size(blocks: Sequence[tuple[str, int]]) -> bytes:
    """The RAM block list: total | MEM_SIZE, then each block's name and used length."""
    total = sum(length for _, length in blocks)
    if total & _PAGE_ALIGN:
        raise ValueError("the total RAM size must be a multiple of the page size")
    out = [_U64.pack(total | RAM_FLAG_MEM_SIZE)]
    for name, length in blocks:
        out.append(_str8(name) + _U64.pack(length))
    return b"".join(out)


def encode_ram_zero(offset: int, block: str | None, fill: int = 0) -> bytes:
    """A ZERO record; ``block`` None means CONTINUE (same block as the previous record)."""
    if offset & _PAGE_ALIGN:
        raise ValueError("offset must be page aligned")
    if block is None:
        return _ZERO_CONTINUE.pack(offset | RAM_FLAG_ZERO | RAM_FLAG_CONTINUE, fill)
    return _U64.pack(offset | RAM_FLAG_ZERO) + _str8(block) + bytes((fill,))


def encode_ram_page(offset: int, block: str | None, data: bytes | bytearray | memoryview) -> bytes:
    """A PAGE record with 4096 raw bytes; ``block`` None means CONTINUE."""
    if offset & _PAGE_ALIGN:
        raise ValueError("offset must be page aligned")
    if memoryview(data).nbytes != PAGE_SIZE:
        raise ValueError("a page is 4096 bytes")
    if block is None:
        return _U64.pack(offset | RAM_FLAG_PAGE | RAM_FLAG_CONTINUE) + bytes(data)
    return _U64.pack(offset | RAM_FLAG_PAGE) + _str8(block) + bytes(data)


def encode_ram_eos() -> bytes:
    return _U64.pack(RAM_FLAG_EOS)


def encode_timer_body(cpu_ticks_offset: int = 0, cpu_clock_offset: int = 0) -> bytes:
    """``timer`` v2: signed ticks offset, 8 unused bytes, signed clock offset."""
    return struct.pack(">q8xq", cpu_ticks_offset, cpu_clock_offset)


def encode_globalstate_body(runstate: str = "running") -> bytes:
    """``globalstate`` v1: be32 strlen+1, then the name NUL-padded to 100 bytes."""
    name = runstate.encode("ascii")
    if len(name) >= GLOBALSTATE_RUNSTATE_SIZE:
        raise ValueError("runstate name too long")
    return struct.pack(">I", len(name) + 1) + name.ljust(GLOBALSTATE_RUNSTATE_SIZE, b"\0")


def encode_command(cmd: int, data: bytes = b"") -> bytes:
    return struct.pack(">BHH", VM_COMMAND, cmd, len(data)) + data


def encode_eof() -> bytes:
    return bytes((VM_EOF,))


def encode_vmdescription(json_text: bytes = VMDESC_MACHINE_NONE) -> bytes:
    return struct.pack(">BI", VM_VMDESCRIPTION, len(json_text)) + json_text


class MainStreamEncoder:
    """Builds a main stream piece by piece, as QEMU 7.2 orders it. Every method returns the
    bytes to write; nothing is buffered except the CONTINUE state (last block named)."""

    def __init__(self, machine: str = "none") -> None:
        self.machine = machine
        self._last_block: str | None = None

    def header(self) -> bytes:
        return encode_file_header(self.machine)

    def ram_start(self, blocks: Sequence[tuple[str, int]]) -> bytes:
        """The whole setup section: START (id 2, ``ram``, v4), MEM_SIZE, EOS, footer.
        Its EOS is sync point #1: each channel owes a (header-only) SYNC packet for it."""
        self._last_block = None
        return (
            encode_section_start(RAM_SECTION_ID, "ram", 0, 4)
            + encode_ram_mem_size(blocks)
            + encode_ram_eos()
            + encode_section_footer(RAM_SECTION_ID)
        )

    def reset_block(self) -> None:
        """Forget the last block named: the next page record names it again (QEMU resets
        ``last_sent_block`` when postcopy starts and when it resumes)."""
        self._last_block = None

    def ram_part(self) -> bytes:
        """Opens an iteration section (PART); follow with records, then ``ram_close``."""
        return encode_section_part(RAM_SECTION_ID)

    def ram_end(self) -> bytes:
        """Opens the completion section (END); follow with records, then ``ram_close``."""
        return encode_section_part(RAM_SECTION_ID, end=True)

    def _block_ref(self, block: str) -> str | None:
        if block == self._last_block:
            return None
        self._last_block = block
        return block

    def ram_zero(self, block: str, offset: int, fill: int = 0) -> bytes:
        return encode_ram_zero(offset, self._block_ref(block), fill)

    def ram_zero_pages(self, block: str, offsets: Iterable[int]) -> bytes:
        """ZERO records for many pages of one block (the common case, in one call)."""
        offsets = list(offsets)
        if not offsets:
            return b""
        if any(offset & _PAGE_ALIGN for offset in offsets):
            raise ValueError("offsets must be page aligned")
        first = encode_ram_zero(offsets[0], self._block_ref(block))
        pack = _ZERO_CONTINUE.pack
        flags = RAM_FLAG_ZERO | RAM_FLAG_CONTINUE
        return first + b"".join([pack(offset | flags, 0) for offset in offsets[1:]])

    def ram_page(self, block: str, offset: int, data: bytes | bytearray | memoryview) -> bytes:
        return encode_ram_page(offset, self._block_ref(block), data)

    def ram_close(self) -> bytes:
        """EOS and the footer: ends a PART or END section (a multifd sync point)."""
        return encode_ram_eos() + encode_section_footer(RAM_SECTION_ID)

    def timer(self, cpu_ticks_offset: int = 0, cpu_clock_offset: int = 0) -> bytes:
        return encode_section_full(
            TIMER_SECTION_ID, "timer", 0, 2, encode_timer_body(cpu_ticks_offset, cpu_clock_offset)
        )

    def globalstate(self, runstate: str = "running") -> bytes:
        return encode_section_full(
            GLOBALSTATE_SECTION_ID, "globalstate", 0, 1, encode_globalstate_body(runstate)
        )

    def eof(self) -> bytes:
        return encode_eof()

    def vmdescription(self, json_text: bytes = VMDESC_MACHINE_NONE) -> bytes:
        return encode_vmdescription(json_text)
