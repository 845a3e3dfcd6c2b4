"""Postcopy on QEMU 7.2's main stream: the MIG_CMD_* commands and their payloads (multifd
layer, sans-IO).

A source with ``postcopy-ram`` sends, after the file header, OPEN_RETURN_PATH, PING 1 and
POSTCOPY_ADVISE (be64 OR of the RAM blocks' page sizes, be64 target page size). At the
switch to postcopy it sends POSTCOPY_RAM_DISCARD commands (version 0, the block name as a
counted string plus a NUL, then up to 12 be64 (start, length) byte ranges each) for the
pages the destination must throw away, PING 2, then one PACKAGED command whose be32 length
is followed by a blob that holds POSTCOPY_LISTEN, the device sections (no EOF, no VM
description), PING 3 and POSTCOPY_RUN; then PING 4, the rest of RAM in PART sections and
finally an END section and EOF. For recovery the source sends POSTCOPY_RESUME and
RECV_BITMAP (a counted block name). Payloads are built and checked here, with QEMU's texts;
``savevm.c`` (``qemu_savevm_send_*``, ``loadvm_postcopy_*``) is the reference. With
``postcopy-preempt`` the source opens one more connection right after the main one (the
destination tells it apart only by arriving second, with multifd off): requested pages go
there as bare RAM records, read by ``PostcopyChannelDecoder``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from migemu.multifd.constants import PAGE_MASK, PAGE_SIZE
from migemu.multifd.errors import ProtocolError
from migemu.multifd.mainstream.encoder import encode_command
from migemu.multifd.mainstream.records import (
    RAM_FLAG_CONTINUE,
    RAM_FLAG_EOS,
    RAM_FLAG_PAGE,
    RAM_FLAG_ZERO,
    RamEOS,
    RamPage,
    RamZero,
)

CMD_OPEN_RETURN_PATH = 1
CMD_PING = 2
CMD_POSTCOPY_ADVISE = 3
CMD_POSTCOPY_LISTEN = 4
CMD_POSTCOPY_RUN = 5
CMD_POSTCOPY_RAM_DISCARD = 6
CMD_PACKAGED = 7
CMD_ENABLE_COLO = 8
CMD_POSTCOPY_RESUME = 9
CMD_RECV_BITMAP = 10

POSTCOPY_RAM_DISCARD_VERSION = 0
MAX_DISCARDS_PER_COMMAND = 12
MAX_PACKAGED_SIZE = 1 << 24  # MAX_VM_CMD_PACKAGED_SIZE
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


def encode_open_return_path() -> bytes:
    return encode_command(CMD_OPEN_RETURN_PATH)


def encode_ping(value: int) -> bytes:
    return encode_command(CMD_PING, _U32.pack(value))


def encode_postcopy_advise(page_size_summary: int, target_page_size: int) -> bytes:
    return encode_command(
        CMD_POSTCOPY_ADVISE, _U64.pack(page_size_summary) + _U64.pack(target_page_size)
    )


def encode_postcopy_listen() -> bytes:
    return encode_command(CMD_POSTCOPY_LISTEN)


def encode_postcopy_run() -> bytes:
    return encode_command(CMD_POSTCOPY_RUN)


def encode_postcopy_resume() -> bytes:
    return encode_command(CMD_POSTCOPY_RESUME)


def encode_recv_bitmap(block: str) -> bytes:
    name = block.encode("latin-1")
    return encode_command(CMD_RECV_BITMAP, bytes((len(name),)) + name)


def encode_packaged(blob: bytes) -> bytes:
    """PACKAGED and the blob it announces (written right after the command)."""
    if len(blob) > MAX_PACKAGED_SIZE:
        raise ValueError(f"Unreasonably large packaged state: {len(blob)}")
    return encode_command(CMD_PACKAGED, _U32.pack(len(blob))) + blob


def encode_ram_discard(block: str, ranges: Sequence[tuple[int, int]]) -> bytes:
    """POSTCOPY_RAM_DISCARD commands for ``ranges`` (byte start, byte length) of ``block``,
    at most 12 ranges per command as QEMU sends them; nothing for no ranges."""
    name = block.encode("latin-1")
    head = bytes((POSTCOPY_RAM_DISCARD_VERSION, len(name))) + name + b"\0"
    out = []
    for i in range(0, len(ranges), MAX_DISCARDS_PER_COMMAND):
        body = b"".join(
            _U64.pack(start) + _U64.pack(length)
            for start, length in ranges[i : i + MAX_DISCARDS_PER_COMMAND]
        )
        out.append(encode_command(CMD_POSTCOPY_RAM_DISCARD, head + body))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class PostcopyAdvise:
    """POSTCOPY_ADVISE: ``None`` sizes for the 0-byte advise (postcopy of non-RAM state)."""

    page_size_summary: int | None
    target_page_size: int | None


def decode_postcopy_advise(data: bytes, *, postcopy_ram: bool) -> PostcopyAdvise:
    """loadvm_postcopy_handle_advise's checks of the payload (length, capability)."""
    if len(data) == 0:
        if postcopy_ram:
            raise ProtocolError("RAM postcopy is enabled but have 0 byte advise")
        return PostcopyAdvise(None, None)
    if len(data) == 16:
        if not postcopy_ram:
            raise ProtocolError("RAM postcopy is disabled but have 16 byte advise")
        summary, tps = struct.unpack(">QQ", data)
        return PostcopyAdvise(summary, tps)
    raise ProtocolError(f"CMD_POSTCOPY_ADVISE invalid length ({len(data)})")


def check_postcopy_advise(advise: PostcopyAdvise, local_summary: int, local_tps: int) -> None:
    if advise.page_size_summary is None:
        return
    if advise.page_size_summary != local_summary:
        raise ProtocolError(
            "Postcopy needs matching RAM page sizes "
            f"(s={advise.page_size_summary:x} d={local_summary:x})"
        )
    if advise.target_page_size != local_tps:
        raise ProtocolError(
            f"Postcopy needs matching target page sizes (s={advise.target_page_size} d={local_tps})"
        )


@dataclass(frozen=True, slots=True)
class RamDiscard:
    """One POSTCOPY_RAM_DISCARD: byte ranges of ``block`` the destination drops."""

    block: str
    ranges: tuple[tuple[int, int], ...]


def decode_ram_discard(data: bytes) -> RamDiscard:
    """loadvm_postcopy_ram_handle_discard's parse, with its texts."""
    length = len(data)
    if length < 1 + 1 + 1 + 1 + 2 * 8:
        raise ProtocolError(f"CMD_POSTCOPY_RAM_DISCARD invalid length ({length})")
    if data[0] != POSTCOPY_RAM_DISCARD_VERSION:
        raise ProtocolError(f"CMD_POSTCOPY_RAM_DISCARD invalid version ({data[0]})")
    name_len = data[1]
    if 2 + name_len >= length:
        raise ProtocolError("CMD_POSTCOPY_RAM_DISCARD Failed to read RAMBlock ID")
    name = data[2 : 2 + name_len].decode("latin-1")
    nil = data[2 + name_len]
    if nil != 0:
        raise ProtocolError(f"CMD_POSTCOPY_RAM_DISCARD missing nil ({nil})")
    rest = length - 3 - name_len
    if rest % 16:
        raise ProtocolError(f"CMD_POSTCOPY_RAM_DISCARD invalid length ({rest})")
    pos = 3 + name_len
    ranges = tuple(struct.unpack_from(">QQ", data, pos + 16 * i) for i in range(rest // 16))
    return RamDiscard(name, ranges)  # type: ignore[arg-type]


def decode_recv_bitmap_cmd(data: bytes) -> str:
    """MIG_CMD_RECV_BITMAP: a counted block name (loadvm_handle_recv_bitmap)."""
    if not data or data[0] + 1 != len(data):
        raise ProtocolError(f"CMD_RECV_BITMAP: invalid length ({len(data)})")
    return data[1:].decode("latin-1")


class PostcopyChannelDecoder:
    """The postcopy-preempt channel (destination side): bare RAM records -- no file header,
    no sections -- as ram_load_postcopy(RAM_CHANNEL_POSTCOPY) reads them: ZERO and PAGE
    records (the block named after every channel switch, then CONTINUE), and an EOS when
    the source shuts the channel down at completion. ``feed`` returns the records the
    bytes complete; the first error is kept."""

    def __init__(self, ram_blocks: Mapping[str, int]) -> None:
        self.ram_blocks = dict(ram_blocks)
        self._buf = bytearray()
        self._last_block: str | None = None
        self._error: ProtocolError | None = None
        self.done = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[RamPage | RamZero | RamEOS]:
        if self._error is not None:
            raise ProtocolError(self._error.desc)
        if self.done:
            return []
        self._buf += data
        out: list[RamPage | RamZero | RamEOS] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= 8:
                (word,) = _U64.unpack_from(buf, pos)
                flags = word & ~PAGE_MASK
                addr = word & PAGE_MASK
                kind = flags & ~RAM_FLAG_CONTINUE
                if kind == RAM_FLAG_EOS:
                    out.append(RamEOS())
                    pos += 8
                    self.done = True
                    break
                if kind not in (RAM_FLAG_ZERO, RAM_FLAG_PAGE):
                    raise ProtocolError(
                        f"Unknown combination of migration flags: 0x{flags:x} (postcopy mode)"
                    )
                p = pos + 8
                if flags & RAM_FLAG_CONTINUE:
                    if self._last_block is None:
                        raise ProtocolError("Ack, bad migration stream!")
                    block = self._last_block
                else:
                    if len(buf) - p < 1 or len(buf) - p < 1 + buf[p]:
                        break
                    block = bytes(buf[p + 1 : p + 1 + buf[p]]).decode("latin-1")
                    p += 1 + buf[p]
                    if block not in self.ram_blocks:
                        raise ProtocolError(f"Can't find block {block}")
                length = self.ram_blocks[block]
                if addr + PAGE_SIZE > length:
                    raise ProtocolError(f"Illegal RAM offset {addr:x}")
                size = 1 if kind == RAM_FLAG_ZERO else PAGE_SIZE
                if len(buf) - p < size:
                    break
                self._last_block = block
                if kind == RAM_FLAG_ZERO:
                    out.append(RamZero(block, addr, buf[p]))
                else:
                    out.append(RamPage(block, addr, bytes(buf[p : p + PAGE_SIZE])))
                pos = p + size
        except ProtocolError as err:
            self._error = err
            self._buf = bytearray()
            raise
        del buf[:pos]
        return out


def encode_preempt_eos() -> bytes:
    """What postcopy_preempt_shutdown_file() writes on the preempt channel at the end."""
    return _U64.pack(RAM_FLAG_EOS)
