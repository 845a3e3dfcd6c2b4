"""Incremental decoder of QEMU 7.2's main migration stream (multifd layer).

``MainStreamDecoder.feed(bytes)`` returns the records (``records.py``) that the bytes
complete; incomplete input is kept for the next call, so records may cross ``feed`` chunks
anywhere. It applies the destination's rules of the reference notes §11 with QEMU 7.2's
messages: header and machine checks, section lookup by (idstr, instance) for START/FULL and by
load id for PART/END (QEMU's "every load id starts at 0" trap included), version checks,
footers, RAM record flags, the block named once and then CONTINUE'd across sections,
offsets inside their block, and an optional VMDESCRIPTION after EOF. A RamEOS record is a
multifd sync point: the caller must wait for every channel's SYNC before applying what
follows. The first error is kept; later calls raise it again.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from migemu.multifd.constants import PAGE_MASK, PAGE_SIZE
from migemu.multifd.errors import MultiFDError, PeerBroken, ProtocolError
from migemu.multifd.mainstream.reader import NeedMore, Reader
from migemu.multifd.mainstream.records import (
    FILE_MAGIC,
    FILE_VERSION,
    FILE_VERSION_COMPAT,
    GLOBALSTATE_RUNSTATE_SIZE,
    QEMU_SECTIONS,
    RAM_FLAG_COMPRESS_PAGE,
    RAM_FLAG_CONTINUE,
    RAM_FLAG_EOS,
    RAM_FLAG_MEM_SIZE,
    RAM_FLAG_PAGE,
    RAM_FLAG_XBZRLE,
    RAM_FLAG_ZERO,
    RUN_STATES,
    VM_COMMAND,
    VM_CONFIGURATION,
    VM_EOF,
    VM_SECTION_END,
    VM_SECTION_FOOTER,
    VM_SECTION_FULL,
    VM_SECTION_PART,
    VM_SECTION_START,
    VM_SUBSECTION,
    VM_VMDESCRIPTION,
    VMEOF,
    Command,
    Configuration,
    GlobalState,
    RamEOS,
    RamMemSize,
    RamPage,
    RamZero,
    Record,
    SectionData,
    SectionFooter,
    SectionPart,
    SectionSpec,
    SectionStart,
    TimerState,
    VMDescription,
)

MAX_MACHINE_NAME = 1024
MAX_RAM_BLOCKS = 256
MAX_VMDESCRIPTION = 16 * 1024 * 1024
_EIO = "load of migration failed: Input/output error"

# Commands: name and fixed data length (None = variable), as mig_cmd_args in savevm.c.
_COMMANDS: dict[int, tuple[str, int | None]] = {
    1: ("OPEN_RETURN_PATH", 0),
    2: ("PING", 4),
    3: ("POSTCOPY_ADVISE", None),
    4: ("POSTCOPY_LISTEN", 0),
    5: ("POSTCOPY_RUN", 0),
    6: ("POSTCOPY_RAM_DISCARD", None),
    7: ("PACKAGED", 4),
    8: ("ENABLE_COLO", 0),
    9: ("POSTCOPY_RESUME", 0),
    10: ("RECV_BITMAP", None),
}

# Known vmstate subsections: name -> {version: size of its own fields}.
_SUBSECTIONS: dict[str, dict[int, int]] = {
    "configuration/target-page-bits": {1: 4},
    "configuration/uuid": {1: 16},
    "timer/icount": {1: 16},
    "timer/icount/warp_timer": {1: 16},
    "timer/icount/timers": {1: 16},
    "timer/icount/shift": {1: 2, 2: 10},
}

_U64_FROM = struct.Struct(">Q").unpack_from


class _State(enum.Enum):
    HEADER = "header"
    CONFIG = "configuration"
    TOP = "top-level"
    RAM = "ram-body"
    BODY = "section-body"
    FOOTER = "footer"
    AFTER_EOF = "after-eof"
    DONE = "done"


@dataclass(slots=True)
class _Handler:
    spec: SectionSpec
    load_id: int = 0
    load_version: int = 0


class MainStreamDecoder:
    """Parses the main channel as a QEMU 7.2 destination would.

    ``machine``: the local machine type the CONFIGURATION must name. ``ram_blocks``: local
    RAMBlock name -> used length; when ``None`` the block list of the stream's MEM_SIZE is
    adopted. ``sections``: the sections this side can load, in QEMU's registration order.
    """

    def __init__(
        self,
        *,
        machine: str = "none",
        ram_blocks: Mapping[str, int] | None = None,
        sections: Iterable[SectionSpec] = QEMU_SECTIONS,
        pause_at_eos: bool = False,
    ) -> None:
        self.machine = machine
        self._pause_at_eos = pause_at_eos
        self._paused = False
        self._eof = False
        self.ram_blocks: dict[str, int] | None = None if ram_blocks is None else dict(ram_blocks)
        self._local_blocks = ram_blocks is not None
        self._handlers = [_Handler(spec) for spec in sections]
        self._buf = bytearray()
        self._pos = 0
        self._state = _State.HEADER
        self._section: _Handler | None = None
        self._section_id = 0
        self._last_block: str | None = None
        self._failed_text = ""
        self._error: MultiFDError | None = None
        self.offset = 0  # stream offset of self._buf[0]

    @property
    def done(self) -> bool:
        """Everything up to and including what follows EOF was decoded."""
        return self._state is _State.DONE

    @property
    def position(self) -> int:
        """Stream offset of the first byte not yet decoded."""
        return self.offset + self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[Record]:
        if self._error is not None:
            raise type(self._error)(self._error.desc)
        if data and self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if self._state is _State.DONE:
            return []  # QEMU stops reading after the VMDESCRIPTION; the rest is ignored
        if data:
            self._buf += data
        records: list[Record] = []
        try:
            self._parse(records)
            if self._eof and not self._paused:
                self._finish_eof(records)
        except MultiFDError as err:
            self._error = err
            self._buf = bytearray()
            raise
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self.offset += self._pos
            self._pos = 0
        return records

    def feed_eof(self) -> list[Record]:
        """The connection ended; returns the records still buffered. Right after EOF that is
        a missing VMDESCRIPTION (accepted: ``VMDescription(None, got=0)``); anywhere else
        ``PeerBroken``. While paused at an EOS the verdict waits for ``release()`` and the
        next ``feed(b"")``."""
        if self._error is not None:
            raise type(self._error)(self._error.desc)
        self._eof = True
        return self.feed(b"")

    def _finish_eof(self, records: list[Record]) -> None:
        if self._state is _State.DONE:
            return
        if self._state is _State.AFTER_EOF and self._pos == len(self._buf):
            self._state = _State.DONE
            records.append(VMDescription(None, 0))
            return
        raise PeerBroken(_EIO)

    def resume_at_top(self) -> None:
        """A postcopy recovery: the stream goes on, on a new connection, at a top-level
        record (qemu_loadvm_state_main's ``retry``). Whatever was buffered of the broken
        connection is dropped, and so is its error; section ids are kept. The source names
        the RAM block again in its first page record."""
        self._buf = bytearray()
        self._pos = 0
        self._error = None
        self._paused = False
        self._eof = False
        self._section = None
        self._last_block = None
        if self._state is not _State.DONE:
            self._state = _State.TOP

    @property
    def paused(self) -> bool:
        """With ``pause_at_eos``: True after a RamEOS record until ``release()``."""
        return self._paused

    def release(self) -> None:
        """Every channel's SYNC for the last EOS has arrived: go on (``feed(b"")``)."""
        self._paused = False

    def _parse(self, records: list[Record]) -> None:
        while not self._paused:
            reader = Reader(self._buf, self._pos)
            state = self._state
            try:
                if state is _State.RAM:
                    self._parse_ram(reader, records)
                elif state is _State.TOP:
                    records.append(self._parse_top(reader))
                elif state is _State.FOOTER:
                    records.append(self._parse_footer(reader))
                elif state is _State.BODY:
                    records.append(self._parse_body(reader))
                elif state is _State.HEADER:
                    self._parse_header(reader)
                elif state is _State.CONFIG:
                    records.append(self._parse_config(reader))
                elif state is _State.AFTER_EOF:
                    records.append(self._parse_after_eof(reader))
                else:
                    return
            except NeedMore:
                return
            self._pos = reader.pos

    def _parse_header(self, r: Reader) -> None:
        magic = r.u32()
        if magic != FILE_MAGIC:
            raise ProtocolError("Not a migration stream")
        version = r.u32()
        if version == FILE_VERSION_COMPAT:
            raise ProtocolError("SaveVM v2 format is obsolete and don't work anymore")
        if version != FILE_VERSION:
            raise ProtocolError("Unsupported migration stream version")
        self._state = _State.CONFIG

    def _parse_config(self, r: Reader) -> Configuration:
        if r.u8() != VM_CONFIGURATION:
            raise ProtocolError("Configuration section missing")
        length = r.u32()
        if length > MAX_MACHINE_NAME:
            raise ProtocolError(f"machine name of {length} bytes is too long")
        machine = r.take(length).decode("latin-1")
        subsections = self._parse_subsections(r, "configuration", "configuration")
        if machine != self.machine:
            raise ProtocolError(
                f"Machine type received is '{machine}' and local is '{self.machine}'"
            )
        for name, _version, body in subsections:
            if name == "configuration/target-page-bits":
                bits = int.from_bytes(body[:4], "big")
                if bits != 12:
                    raise ProtocolError(f"Received TARGET_PAGE_BITS is {bits} but local is 12")
        self._state = _State.TOP
        return Configuration(machine, tuple(subsections))

    def _parse_subsections(
        self, r: Reader, prefix: str, device: str
    ) -> list[tuple[str, int, bytes]]:
        """vmstate subsections whose names start with ``prefix`` (peeked like QEMU)."""
        found: list[tuple[str, int, bytes]] = []
        while r.peek_u8() == VM_SUBSECTION:
            start = r.pos
            r.u8()
            name = r.str8()
            if not name.startswith(prefix):
                r.pos = start
                break
            version = r.u32()
            if name == "configuration/capabilities" and version == 1:
                body_start = r.pos
                count = r.u32()
                if count > 64:
                    raise ProtocolError("load of migration failed: Invalid argument")
                for _ in range(count):
                    r.str8()
                body = bytes(r.buf[body_start : r.pos])
            else:
                size = _SUBSECTIONS.get(name, {}).get(version)
                if size is None:
                    if device == "configuration":
                        raise ProtocolError("load of migration failed: No such file or directory")
                    raise ProtocolError(
                        f"error while loading state for instance 0x0 of device '{device}'"
                    )
                body = r.take(size)
            found.append((name, version, body))
            found.extend(self._parse_subsections(r, name, device))
        return found

    def _parse_top(self, r: Reader) -> Record:
        kind = r.u8()
        if kind in (VM_SECTION_START, VM_SECTION_FULL):
            section_id = r.u32()
            idstr = r.str8()
            instance_id = r.u32()
            version_id = r.u32()
            handler = self._find(idstr, instance_id)
            if handler is None:
                raise ProtocolError(
                    f"Unknown savevm section or instance '{idstr}' {instance_id}. Make sure "
                    "that your current VM setup matches your saved VM setup, including any "
                    "hotplugged devices"
                )
            if version_id > handler.spec.version_id:
                raise ProtocolError(
                    f"savevm: unsupported version {version_id} for '{idstr}' "
                    f"v{handler.spec.version_id}"
                )
            handler.load_id = section_id
            handler.load_version = version_id
            self._enter_body(handler, section_id, part=False)
            return SectionStart(
                section_id, idstr, instance_id, version_id, full=kind == VM_SECTION_FULL
            )
        if kind in (VM_SECTION_PART, VM_SECTION_END):
            section_id = r.u32()
            handler = next((h for h in self._handlers if h.load_id == section_id), None)
            if handler is None:
                raise ProtocolError(f"Unknown savevm section {section_id}")
            self._enter_body(handler, section_id, part=True)
            return SectionPart(section_id, handler.spec.idstr, end=kind == VM_SECTION_END)
        if kind == VM_COMMAND:
            cmd = r.u16()
            length = r.u16()
            data = r.take(length)
            known = _COMMANDS.get(cmd)
            if known is None:
                raise ProtocolError(f"MIG_CMD 0x{cmd:x} unknown (len 0x{length:x})")
            name, fixed = known
            if fixed is not None and length != fixed:
                raise ProtocolError(f"{name} received bad length {length}/{fixed}")
            return Command(cmd, data)
        if kind == VM_EOF:
            self._state = _State.AFTER_EOF
            return VMEOF()
        raise ProtocolError(f"Unknown savevm section type {kind}")

    def _find(self, idstr: str, instance_id: int) -> _Handler | None:
        for handler in self._handlers:
            if handler.spec.idstr == idstr and handler.spec.instance_id == instance_id:
                return handler
        return None

    def _enter_body(self, handler: _Handler, section_id: int, *, part: bool) -> None:
        spec = handler.spec
        version = handler.load_version
        if part:
            failed = f"error while loading state section id {section_id}({spec.idstr})"
        else:
            failed = (
                f"error while loading state for instance 0x{spec.instance_id:x} of device "
                f"'{spec.idstr}'"
            )
        if spec.kind == "ram":
            if version != 4:
                raise ProtocolError(failed)
        elif version < spec.minimum_version_id:
            # Two spaces before the number: QEMU 7.2's own text (checked against it).
            raise ProtocolError(
                f"{spec.idstr}: incoming version_id {version} is too old for local minimum "
                f"version_id  {spec.minimum_version_id}"
            )
        self._section = handler
        self._section_id = section_id
        self._failed_text = failed
        self._state = _State.RAM if spec.kind == "ram" else _State.BODY

    def _parse_body(self, r: Reader) -> Record:
        handler = self._section
        assert handler is not None
        spec = handler.spec
        if spec.kind == "timer":
            ticks = r.i64()
            r.take(8)  # VMSTATE_UNUSED
            clock = r.i64() if handler.load_version >= 2 else 0
            subsections = self._parse_subsections(r, "timer", spec.idstr)
            record: Record = TimerState(ticks, clock, tuple(subsections))
        elif spec.kind == "globalstate":
            r.u32()  # size: strlen + 1, not used by the destination
            raw = r.take(GLOBALSTATE_RUNSTATE_SIZE)
            runstate = raw[: GLOBALSTATE_RUNSTATE_SIZE - 1].split(b"\0", 1)[0]
            name = runstate.decode("latin-1")
            if name not in RUN_STATES:
                raise ProtocolError(f"invalid parameter value: {name}")
            record = GlobalState(name)
        elif spec.parse_body is not None:
            record = SectionData(spec.idstr, spec.parse_body(r))
        else:
            raise ProtocolError(self._failed_text)
        self._state = _State.FOOTER
        return record

    def _parse_footer(self, r: Reader) -> SectionFooter:
        handler = self._section
        assert handler is not None
        idstr = handler.spec.idstr
        if r.u8() != VM_SECTION_FOOTER:
            raise ProtocolError(f"Missing section footer for {idstr}")
        read_id = r.u32()
        if read_id != handler.load_id:
            raise ProtocolError(
                f"Mismatched section id in footer for {idstr} - read 0x{read_id:x} expected "
                f"0x{handler.load_id:x}"
            )
        self._section = None
        self._state = _State.TOP
        return SectionFooter(read_id, idstr)

    def _parse_after_eof(self, r: Reader) -> VMDescription:
        kind = r.u8()
        if kind != VM_VMDESCRIPTION:
            self._state = _State.DONE
            return VMDescription(None, kind)
        length = r.u32()
        if length > MAX_VMDESCRIPTION:
            raise ProtocolError(f"VMDESCRIPTION of {length} bytes is too long")
        text = r.take(length)
        self._state = _State.DONE
        return VMDescription(text)

    # ------------------------------------------------------------ RAM records

    def _parse_ram(self, r: Reader, records: list[Record]) -> None:
        """RAM records up to and including EOS; commits after each whole record."""
        append = records.append
        buf = r.buf
        zero_continue = RAM_FLAG_ZERO | RAM_FLAG_CONTINUE
        while True:
            # Fast path for the bulk of a PART: 9-byte ZERO|CONTINUE records.
            block = self._last_block
            if block is not None:
                length = self._block_length(block)
                pos = r.pos
                end = r.end - 9
                while pos <= end:
                    word = _U64_FROM(buf, pos)[0]
                    if word & 0xFFF != zero_continue:
                        break
                    addr = word & PAGE_MASK
                    if addr + PAGE_SIZE > length:
                        raise ProtocolError(f"Illegal RAM offset {addr:x}")
                    append(RamZero(block, addr, buf[pos + 8]))
                    pos += 9
                r.pos = self._pos = pos
            word = r.u64()
            flags = word & ~PAGE_MASK
            addr = word & PAGE_MASK
            kind = flags & ~RAM_FLAG_CONTINUE
            if kind == RAM_FLAG_ZERO or kind == RAM_FLAG_PAGE:
                block = self._ram_block(r, flags)
                length = self._block_length(block)
                if addr + PAGE_SIZE > length:
                    raise ProtocolError(f"Illegal RAM offset {addr:x}")
                if kind == RAM_FLAG_ZERO:
                    append(RamZero(block, addr, r.u8()))
                else:
                    append(RamPage(block, addr, r.take(PAGE_SIZE)))
            elif kind == RAM_FLAG_EOS:
                append(RamEOS())
                self._paused = self._pause_at_eos
                self._state = _State.FOOTER
                self._pos = r.pos
                return
            elif kind == RAM_FLAG_MEM_SIZE:
                append(self._mem_size(r, addr))
            elif kind in (RAM_FLAG_COMPRESS_PAGE, RAM_FLAG_XBZRLE):
                # Valid for QEMU with the old compress / xbzrle capabilities, which migemu
                # does not offer (both are incompatible with or unused by multifd).
                name = "COMPRESS_PAGE" if kind == RAM_FLAG_COMPRESS_PAGE else "XBZRLE"
                raise ProtocolError(f"RAM_SAVE_FLAG_{name} is not supported by migemu")
            else:
                raise ProtocolError(f"Unknown combination of migration flags: 0x{flags:x}")
            self._pos = r.pos

    def _ram_block(self, r: Reader, flags: int) -> str:
        if flags & RAM_FLAG_CONTINUE:
            if self._last_block is None:
                raise ProtocolError("Ack, bad migration stream!")
            return self._last_block
        name = r.str8()
        if self.ram_blocks is None or name not in self.ram_blocks:
            raise ProtocolError(f"Can't find block {name}")
        self._last_block = name
        return name

    def _block_length(self, block: str) -> int:
        assert self.ram_blocks is not None
        return self.ram_blocks[block]

    def _mem_size(self, r: Reader, total: int) -> RamMemSize:
        blocks: list[tuple[str, int]] = []
        remaining = total
        while remaining:
            if len(blocks) >= MAX_RAM_BLOCKS:
                raise ProtocolError(f"more than {MAX_RAM_BLOCKS} RAM blocks")
            name = r.str8()
            length = r.u64()
            if length > remaining:
                raise ProtocolError(f"RAM block list overruns its total 0x{total:x}")
            remaining -= length
            blocks.append((name, length))
        if self._local_blocks:
            assert self.ram_blocks is not None
            for name, length in blocks:
                local = self.ram_blocks.get(name)
                if local is None:
                    raise ProtocolError(f'Unknown ramblock "{name}", cannot accept migration')
                if local != length:
                    raise ProtocolError(
                        f"Size mismatch: {name}: 0x{length:x} != 0x{local:x}: {os.strerror(22)}"
                    )
        else:
            self.ram_blocks = dict(blocks)
        return RamMemSize(total, tuple(blocks))
