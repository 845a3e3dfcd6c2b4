"""MultiFDPacket: the header in front of every multifd payload (multifd layer).

On the wire: 320 fixed bytes (magic, version, flags, pages_alloc, normal_pages,
next_packet_size, packet_num, 32 reserved bytes, a NUL-padded 256-byte RAMBlock name) and then
``pages_alloc`` be64 page offsets -- always 1344 bytes with 4 KiB pages. Only the first
``normal_pages`` offsets mean anything; QEMU 7.2 leaves stale values in the rest. A packet
without pages has no payload, whatever its (stale) ``next_packet_size`` says, and its
ramblock and flags are not checked. Checks and messages are QEMU 7.2's, in its order.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from migemu.multifd.constants import (
    FLAG_COMPRESSION_MASK,
    FLAG_SYNC,
    MULTIFD_MAGIC,
    MULTIFD_VERSION,
    PACKET_FIXED_SIZE,
    PACKET_HEADER_WIRE_SIZE,
    PACKET_PAGES,
    PAGE_SIZE,
    RAMBLOCK_NAME_SIZE,
)
from migemu.multifd.errors import ProtocolError

_FIXED = struct.Struct(">IIIIIIQ32s256s")
_OFFSETS = struct.Struct(f">{PACKET_PAGES}Q")
assert _FIXED.size == PACKET_FIXED_SIZE
assert PACKET_FIXED_SIZE + _OFFSETS.size == PACKET_HEADER_WIRE_SIZE

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class PacketHeader:
    """One decoded (or to-be-encoded) packet header.

    ``offsets`` holds exactly the ``normal_pages`` valid offsets (fewer if a corrupt header
    claims more than the wire can carry; the checks reject that). ``stale_offsets`` are the
    remaining wire entries, kept only so a decoded header re-encodes byte for byte; an encoder
    may leave it empty (zeros are sent).
    """

    flags: int
    normal_pages: int
    next_packet_size: int
    packet_num: int
    ramblock: str = ""
    offsets: tuple[int, ...] = ()
    pages_alloc: int = PACKET_PAGES
    stale_offsets: tuple[int, ...] = ()
    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION
    reserved: bytes = bytes(32)

    @property
    def sync(self) -> bool:
        return bool(self.flags & FLAG_SYNC)

    @property
    def compression(self) -> int:
        return self.flags & FLAG_COMPRESSION_MASK


def make_header(
    *,
    packet_num: int,
    ramblock: str = "",
    offsets: Sequence[int] = (),
    payload_size: int = 0,
    method_flag: int = 0,
    sync: bool = False,
) -> PacketHeader:
    """A header as migemu sends it: compression bits only when there are pages (like 7.2),
    ``next_packet_size`` 0 on page-less packets, unused offsets zero."""
    flags = (method_flag if offsets else 0) | (FLAG_SYNC if sync else 0)
    return PacketHeader(
        flags=flags,
        normal_pages=len(offsets),
        next_packet_size=payload_size if offsets else 0,
        packet_num=packet_num,
        ramblock=ramblock,
        offsets=tuple(offsets),
    )


def encode_header(header: PacketHeader) -> bytes:
    """The 1344 header bytes. Raises ``ValueError`` for values that cannot be encoded."""
    if len(header.offsets) > PACKET_PAGES or len(header.offsets) != header.normal_pages:
        raise ValueError("offsets must hold normal_pages (<= 128) entries")
    name = header.ramblock.encode("latin-1")
    if len(name) >= RAMBLOCK_NAME_SIZE:
        raise ValueError("ramblock name must be shorter than 256 bytes")
    if len(header.reserved) != 32:
        raise ValueError("reserved must be 32 bytes")
    tail = header.stale_offsets[: PACKET_PAGES - len(header.offsets)]
    offsets = header.offsets + tail + (0,) * (PACKET_PAGES - len(header.offsets) - len(tail))
    return _FIXED.pack(
        header.magic & _U32,
        header.version & _U32,
        header.flags & _U32,
        header.pages_alloc & _U32,
        header.normal_pages & _U32,
        header.next_packet_size & _U32,
        header.packet_num & _U64,
        header.reserved,
        name,
    ) + _OFFSETS.pack(*offsets)


def decode_header(data: bytes | bytearray | memoryview) -> PacketHeader:
    """Split exactly 1344 bytes into a ``PacketHeader``; no semantic checks (``check_header``)."""
    if len(data) != PACKET_HEADER_WIRE_SIZE:
        raise ProtocolError(
            f"multifd: packet header is {len(data)} bytes, expected {PACKET_HEADER_WIRE_SIZE}"
        )
    magic, version, flags, alloc, normal, size, num, reserved, name = _FIXED.unpack_from(data)
    offsets = _OFFSETS.unpack_from(data, PACKET_FIXED_SIZE)
    used = min(normal, PACKET_PAGES)
    # QEMU forces byte 255 to NUL before looking the name up.
    name = name[: RAMBLOCK_NAME_SIZE - 1].split(b"\0", 1)[0]
    return PacketHeader(
        flags=flags,
        normal_pages=normal,
        next_packet_size=size,
        packet_num=num,
        ramblock=name.decode("latin-1"),
        offsets=offsets[:used],
        pages_alloc=alloc,
        stale_offsets=offsets[used:],
        magic=magic,
        version=version,
        reserved=reserved,
    )


def check_header(
    header: PacketHeader,
    blocks: Mapping[str, int],
    *,
    page_count: int = PACKET_PAGES,
) -> None:
    """The receiver's per-packet checks, in QEMU 7.2's order, with its messages.

    ``blocks`` maps each local RAMBlock name to its used length in bytes. The block and the
    offsets are checked only when the packet carries pages. Beyond QEMU, an offset that is
    not page aligned is refused (QEMU never sends one; a page-indexed RAM needs alignment).
    """
    if header.magic != MULTIFD_MAGIC:
        raise ProtocolError(
            f"multifd: received packet magic {header.magic:x} and expected magic {MULTIFD_MAGIC:x}"
        )
    if header.version != MULTIFD_VERSION:
        raise ProtocolError(
            f"multifd: received packet version {header.version} and expected version "
            f"{MULTIFD_VERSION}"
        )
    if header.pages_alloc > page_count:
        raise ProtocolError(
            f"multifd: received packet with size {header.pages_alloc} and expected a size "
            f"of {page_count}"
        )
    if header.normal_pages > header.pages_alloc:
        raise ProtocolError(
            f"multifd: received packet with {header.normal_pages} pages and expected maximum "
            f"pages are {header.pages_alloc}"
        )
    if header.normal_pages == 0:
        return
    used_length = blocks.get(header.ramblock)
    if used_length is None:
        raise ProtocolError(f"multifd: unknown ram block {header.ramblock}")
    limit = used_length - PAGE_SIZE
    for offset in header.offsets:
        if offset > limit:
            raise ProtocolError(f"multifd: offset too long {offset} (max {used_length:x})")
        if offset & (PAGE_SIZE - 1):
            raise ProtocolError(f"multifd: offset {offset:#x} is not page aligned")


def check_flags(header: PacketHeader, channel_id: int, method_flag: int) -> None:
    """The compression check, made only on packets with pages: every bit but SYNC must equal
    the configured method's flag. QEMU prints the flags with SYNC already removed."""
    if header.normal_pages == 0:
        return
    received = header.flags & ~FLAG_SYNC & _U32
    if received != method_flag:
        raise ProtocolError(
            f"multifd {channel_id}: flags received {received:x} flags expected {method_flag:x}"
        )
