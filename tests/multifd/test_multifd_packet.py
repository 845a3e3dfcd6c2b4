"""MultiFDPacket header encode/decode and the receiver's checks with QEMU 7.2's messages."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from migemu.multifd import (
    PACKET_HEADER_WIRE_SIZE,
    ProtocolError,
    check_flags,
    check_header,
    decode_header,
    encode_header,
    make_header,
)

BLOCKS = {"mem0": 4 << 20}
GOOD = make_header(
    packet_num=7, ramblock="mem0", offsets=[0, 4096, 8192], payload_size=999, method_flag=4
)


def test_layout() -> None:
    raw = encode_header(GOOD)
    assert len(raw) == PACKET_HEADER_WIRE_SIZE == 1344
    magic, version, flags, alloc, normal, size, num = struct.unpack_from(">IIIIIIQ", raw)
    assert (magic, version, flags, alloc, normal, size, num) == (
        0x11223344,
        1,
        4,
        128,
        3,
        999,
        7,
    )
    assert raw[32:64] == bytes(32)
    assert raw[64:320] == b"mem0" + bytes(252)
    assert struct.unpack_from(">4Q", raw, 320) == (0, 4096, 8192, 0)
    assert decode_header(raw) == dataclasses.replace(GOOD, stale_offsets=(0,) * 125)


def test_make_header_like_qemu() -> None:
    sync_only = make_header(packet_num=3, method_flag=4, sync=True, payload_size=5)
    assert (sync_only.flags, sync_only.next_packet_size, sync_only.normal_pages) == (1, 0, 0)
    assert make_header(packet_num=1, offsets=[0], method_flag=2, sync=True).flags == 3
    assert GOOD.compression == 4 and not GOOD.sync


def test_stale_offsets_round_trip() -> None:
    header = dataclasses.replace(GOOD, stale_offsets=tuple(range(1, 126)))
    assert decode_header(encode_header(header)) == header


def test_ramblock_byte_255_is_ignored() -> None:
    raw = bytearray(encode_header(GOOD))
    raw[64:320] = b"x" * 256
    assert decode_header(bytes(raw)).ramblock == "x" * 255


def test_encode_rejects_inconsistent_headers() -> None:
    with pytest.raises(ValueError):
        encode_header(dataclasses.replace(GOOD, normal_pages=4))
    with pytest.raises(ValueError):
        encode_header(dataclasses.replace(GOOD, ramblock="r" * 256))


def test_decode_needs_the_whole_header() -> None:
    with pytest.raises(ProtocolError):
        decode_header(bytes(1343))


def _check(**changes: object) -> str:
    header = dataclasses.replace(GOOD, **changes)
    with pytest.raises(ProtocolError) as info:
        check_header(decode_header(encode_header(header)), BLOCKS)
    return info.value.desc


def test_magic() -> None:
    assert _check(magic=0x11223345) == (
        "multifd: received packet magic 11223345 and expected magic 11223344"
    )


def test_version() -> None:
    assert _check(version=2) == "multifd: received packet version 2 and expected version 1"


def test_pages_alloc() -> None:
    assert _check(pages_alloc=129) == (
        "multifd: received packet with size 129 and expected a size of 128"
    )


def test_normal_pages_over_alloc() -> None:
    assert _check(pages_alloc=2) == (
        "multifd: received packet with 3 pages and expected maximum pages are 2"
    )


def test_normal_pages_over_alloc_beyond_wire() -> None:
    header = decode_header(encode_header(GOOD)[:16] + struct.pack(">I", 500) + bytes(1324))
    with pytest.raises(ProtocolError, match="received packet with 500 pages and expected max"):
        check_header(header, BLOCKS)


def test_unknown_ramblock() -> None:
    assert _check(ramblock="pc.ram") == "multifd: unknown ram block pc.ram"


def test_offset_too_long() -> None:
    assert _check(offsets=(0, 4 << 20, 8192)) == "multifd: offset too long 4194304 (max 400000)"
    last = (4 << 20) - 4096
    check_header(dataclasses.replace(GOOD, offsets=(0, last, 8192)), BLOCKS)


def test_unaligned_offset() -> None:
    assert "not page aligned" in _check(offsets=(0, 4097, 8192))


def test_pageless_packets_skip_block_and_offsets() -> None:
    stale = dataclasses.replace(
        GOOD, normal_pages=0, offsets=(), ramblock="nope", next_packet_size=145787, flags=0xFF
    )
    check_header(stale, BLOCKS)
    check_flags(stale, 0, 4)


def test_flags_checked_only_with_pages() -> None:
    check_flags(GOOD, 1, 4)
    check_flags(dataclasses.replace(GOOD, flags=5), 1, 4)  # SYNC rides along
    with pytest.raises(ProtocolError) as info:
        check_flags(dataclasses.replace(GOOD, flags=3), 1, 4)
    assert info.value.desc == "multifd 1: flags received 2 flags expected 4"
    with pytest.raises(ProtocolError, match="flags received 44 flags expected 4"):
        check_flags(dataclasses.replace(GOOD, flags=0x45), 1, 4)


def test_check_order_magic_first() -> None:
    assert "magic" in _check(magic=1, version=3, pages_alloc=500, ramblock="x")
