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
``savevm.c`` (``qemu_savevm_send_*``, ``loadvm_postcopy_*``) is the reference.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from migemu.multifd.errors import ProtocolError
from migemu.multifd.mainstream.encoder import encode_command

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
