"""One multifd channel end to end: ChannelEncoder bytes into ChannelDecoder records."""

from __future__ import annotations

import dataclasses
import random

import pytest

from migemu.multifd import (
    MAX_COMPRESSED_PAYLOAD,
    UNEXPECTED_EOF,
    ChannelClosed,
    ChannelDecoder,
    ChannelEncoder,
    CodecError,
    MultiFDInit,
    PeerBroken,
    ProtocolError,
    ReceivedPacket,
    check_init,
    encode_header,
    make_header,
)

PAGE = 4096
BLOCKS = {"mem0": 1 << 20}


def pages_for(offsets: list[int]) -> list[bytes]:
    return [random.Random(o).randbytes(64) * 64 for o in offsets]


def build_stream(method: str, channel_id: int = 1) -> tuple[bytes, list[tuple]]:
    """A channel like QEMU 7.2's: setup SYNC, data, SYNC on data, empty flags-0 packets,
    repeated packet numbers, a final SYNC that is not the last packet."""
    enc = ChannelEncoder(channel_id, method, level=1)
    out = [enc.greeting()]
    plan = [
        (1, [], True),
        (3, [0, 4096, 8192], False),
        (7, list(range(12288, 12288 + 128 * PAGE, PAGE))[:103], True),
        (7, [], False),
        (9, [], True),
        (9, [], False),
        (12, [4096], False),
    ]
    for num, offsets, sync in plan:
        header, payload = enc.packet(num, "mem0", offsets, pages_for(offsets), sync=sync)
        out += [header, payload]
    return b"".join(out), plan


def run(decoder: ChannelDecoder, data: bytes, chunks: list[int]) -> list[ReceivedPacket]:
    packets: list[ReceivedPacket] = []
    pos = 0
    sizes = iter(chunks)
    while pos < len(data):
        size = next(sizes, 1 << 30)
        pending = decoder.feed(data[pos : pos + size])
        pos += size
        while pending:
            record = pending.pop(0)
            if isinstance(record, MultiFDInit):
                decoder.accept(check_init(record, channels=2))
            else:
                packets.append(record)
                if record.sync:
                    assert decoder.paused
                    assert decoder.feed(b"") == []  # nothing parsed while paused
                    decoder.release()
            if not pending:
                pending = decoder.feed(b"")
    return packets


@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_any_chunking(method: str, seed: int) -> None:
    data, plan = build_stream(method)
    rng = random.Random(seed)
    chunks = [rng.choice([1, 3, 64, 1343, 1344, 1345, 5000, 70000]) for _ in range(2000)]
    decoder = ChannelDecoder(method, BLOCKS)
    packets = run(decoder, data, chunks)
    decoder.feed_eof()
    assert decoder.channel_id == 1
    assert [(p.packet_num, p.header.offsets, p.sync) for p in packets] == [
        (num, tuple(offsets), sync) for num, offsets, sync in plan
    ]
    for packet, (_, offsets, _) in zip(packets, plan, strict=True):
        assert packet.data == b"".join(pages_for(offsets))


def test_flags_on_the_wire() -> None:
    data, _ = build_stream("zstd")
    packets = run(ChannelDecoder("zstd", BLOCKS), data, [])
    assert [p.header.flags for p in packets] == [0x1, 0x4, 0x5, 0x0, 0x1, 0x0, 0x4]


def test_pageless_packet_has_no_payload_whatever_next_packet_size_says() -> None:
    enc = ChannelEncoder(0, "zstd")
    stale = dataclasses.replace(make_header(packet_num=8, sync=True), next_packet_size=145787)
    tail_header, tail_payload = enc.packet(9, "mem0", [0], [bytes(PAGE)])
    data = enc.greeting() + encode_header(stale) + tail_header + tail_payload
    packets = run(ChannelDecoder("zstd", BLOCKS), data, [])
    assert [p.packet_num for p in packets] == [8, 9]
    assert packets[0].data == b"" and packets[1].data == bytes(PAGE)


def test_none_reads_pages_not_next_packet_size() -> None:
    header = dataclasses.replace(
        make_header(packet_num=1, ramblock="mem0", offsets=[0, 4096]), next_packet_size=7
    )
    data = ChannelEncoder(0).greeting() + encode_header(header) + b"\x01" * (2 * PAGE)
    packets = run(ChannelDecoder("none", BLOCKS), data, [])
    assert packets[0].data == b"\x01" * (2 * PAGE)


def test_oversized_compressed_payload_is_refused() -> None:
    header = make_header(
        packet_num=1,
        ramblock="mem0",
        offsets=[0],
        payload_size=MAX_COMPRESSED_PAYLOAD + 1,
        method_flag=4,
    )
    decoder = ChannelDecoder("zstd", BLOCKS)
    decoder.feed(ChannelEncoder(0).greeting())
    decoder.accept(0)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(encode_header(header))
    assert info.value.desc == (
        "multifd 0: received packet payload of 1048577 bytes, more than 1048576"
    )


def test_wrong_method_is_a_flags_error() -> None:
    data, _ = build_stream("zlib", channel_id=1)
    with pytest.raises(ProtocolError) as info:
        run(ChannelDecoder("zstd", BLOCKS), data, [])
    assert info.value.desc == "multifd 1: flags received 2 flags expected 4"


def test_errors_are_sticky() -> None:
    data, _ = build_stream("zstd")
    data = data[: 64 + 1344 + 1344 + 10] + b"\xff" * 40 + data[64 + 2688 + 50 :]
    decoder = ChannelDecoder("zstd", BLOCKS)
    with pytest.raises(CodecError) as first:
        run(decoder, data, [])
    assert decoder.error is not None
    with pytest.raises(CodecError) as again:
        decoder.feed(b"more")
    assert again.value.desc == first.value.desc
    with pytest.raises(CodecError):
        decoder.feed_eof()


def test_eof_mid_packet_is_peer_broken() -> None:
    data, _ = build_stream("none")
    decoder = ChannelDecoder("none", BLOCKS)
    run(decoder, data[: 64 + 1344 + 1344 + 100], [])
    with pytest.raises(PeerBroken) as info:
        decoder.feed_eof()
    assert info.value.desc == UNEXPECTED_EOF


def test_eof_mid_greeting_is_peer_broken() -> None:
    decoder = ChannelDecoder("none", BLOCKS)
    decoder.feed(b"\x11\x22")
    with pytest.raises(PeerBroken):
        decoder.feed_eof()


def test_eof_at_packet_boundary_is_clean_and_closes() -> None:
    data, _ = build_stream("zlib")
    decoder = ChannelDecoder("zlib", BLOCKS)
    run(decoder, data, [])
    decoder.feed_eof()
    with pytest.raises(ChannelClosed):
        decoder.feed(b"x")


def test_close_stops_everything() -> None:
    decoder = ChannelDecoder("none", BLOCKS)
    decoder.close()
    with pytest.raises(ChannelClosed):
        decoder.feed(ChannelEncoder(0).greeting())


def test_accept_only_after_greeting() -> None:
    decoder = ChannelDecoder("none", BLOCKS)
    with pytest.raises(RuntimeError):
        decoder.accept(0)
    with pytest.raises(ValueError):
        ChannelDecoder("lz4", BLOCKS)


def test_no_pause_mode() -> None:
    data, plan = build_stream("none")
    decoder = ChannelDecoder("none", BLOCKS, pause_at_sync=False)
    records = decoder.feed(data)
    decoder.accept(1)
    packets = decoder.feed(b"")
    assert len(records) == 1 and len(packets) == len(plan)


def test_encoder_validates() -> None:
    enc = ChannelEncoder(0, "none")
    with pytest.raises(ValueError):
        enc.packet(0, "mem0", [0, 4096], [bytes(PAGE)])


def test_pages_and_runs() -> None:
    offsets = [0, 4096, 8192, 40960, 45056, 4096 * 100]
    enc = ChannelEncoder(0, "none")
    pages = pages_for(offsets)
    data = enc.greeting() + b"".join(enc.packet(1, "mem0", offsets, pages))
    decoder = ChannelDecoder("none", BLOCKS)
    decoder.feed(data)
    decoder.accept(0)
    (packet,) = decoder.feed(b"")
    assert [(o, bytes(v)) for o, v in packet.pages()] == list(zip(offsets, pages, strict=True))
    runs = [(o, len(v) // PAGE) for o, v in packet.runs()]
    assert runs == [(0, 3), (40960, 2), (409600, 1)]
    assert b"".join(bytes(v) for _, v in packet.runs()) == b"".join(pages)
    assert list(ReceivedPacket(make_header(packet_num=1), b"").runs()) == []


def test_needed_tracks_the_next_record() -> None:
    data, _ = build_stream("zstd")
    decoder = ChannelDecoder("zstd", BLOCKS)
    assert decoder.needed() == 64
    decoder.feed(data[:10])
    assert decoder.needed() == 54
    decoder.feed(data[10:64])
    assert decoder.needed() == 0  # waiting for accept()
    decoder.accept(1)
    assert decoder.needed() == 1344


def test_eof_while_paused_defers_the_verdict() -> None:
    """The whole channel arrived and the peer closed while we sit at a SYNC: the buffered
    packets still come out after release(), then the channel ends cleanly."""
    data, plan = build_stream("zlib")
    decoder = ChannelDecoder("zlib", BLOCKS)
    decoder.feed(data)
    decoder.accept(1)
    packets = decoder.feed(b"")
    assert decoder.paused and len(packets) == 1
    assert decoder.feed_eof() == []
    while decoder.paused:
        decoder.release()
        packets += decoder.feed(b"")
    assert len(packets) == len(plan)
    assert isinstance(decoder.error, ChannelClosed)


def test_eof_while_paused_with_a_truncated_packet() -> None:
    data, _ = build_stream("none")
    decoder = ChannelDecoder("none", BLOCKS)
    decoder.feed(data[:-10])
    decoder.accept(1)
    decoder.feed(b"")
    decoder.feed_eof()
    with pytest.raises(PeerBroken):
        while True:
            decoder.release()
            decoder.feed(b"")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_direct_payloads_place_every_page_like_feed_does(seed: int) -> None:
    """A caller reading raw payloads itself (begin_direct/end_direct) gets the same packets
    and puts the same bytes at the same offsets as the buffered path, whatever the chunking."""
    from migemu.multifd.receiver import offset_runs

    data, plan = build_stream("none")
    rng = random.Random(seed)
    ram = bytearray(BLOCKS["mem0"])
    decoder = ChannelDecoder("none", BLOCKS)
    pos = 0
    packets: list[ReceivedPacket] = []

    def take(size: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + size]
        pos += len(chunk)
        return chunk

    pending = decoder.feed(take(64 + rng.randrange(0, 3000)))
    while True:
        for record in pending:
            if isinstance(record, MultiFDInit):
                decoder.accept(check_init(record, channels=2))
            else:
                packets.append(record)
                for offset, page in record.pages():  # buffered (a placed packet has none)
                    ram[offset : offset + PAGE] = page
        pending = []
        if (direct := decoder.begin_direct()) is not None:
            assert decoder.needed() == 0
            with pytest.raises(RuntimeError):
                decoder.feed(b"x")
            rest = direct.prefix + take(direct.remaining)
            at = 0
            for offset, size in offset_runs(direct.header.offsets):
                ram[offset : offset + size] = rest[at : at + size]
                at += size
            pending = decoder.end_direct()
            continue
        if decoder.paused:
            decoder.release()
            pending = decoder.feed(b"")
            if pending:
                continue
        if pos >= len(data):
            break
        pending = decoder.feed(take(rng.choice([1, 100, 1344, 5000, 300000])))
    assert [(p.packet_num, p.sync) for p in packets] == [(n, s) for n, _, s in plan]
    want = bytearray(BLOCKS["mem0"])
    for _, offsets, _ in plan:
        for offset, page in zip(offsets, pages_for(offsets), strict=True):
            want[offset : offset + PAGE] = page
    assert ram == want
    assert all(not p.placed or not p.data for p in packets)
    assert any(p.placed for p in packets) or seed == 0


def test_direct_only_for_raw_payloads_and_failures_stick() -> None:
    data, _ = build_stream("zstd")
    dec = ChannelDecoder("zstd", BLOCKS)
    dec.accept(check_init(dec.feed(data[:64])[0], channels=2))
    dec.feed(data[64 : 64 + 1344 * 2])
    assert not dec.raw and dec.begin_direct() is None
    none = ChannelDecoder("none", BLOCKS)
    with pytest.raises(RuntimeError):
        none.end_direct()
    stream, _ = build_stream("none")
    none.accept(check_init(none.feed(stream[:64])[0], channels=2))
    assert none.begin_direct() is None  # no header yet
    none.feed(stream[64 : 64 + 1344])  # the SYNC packet without pages
    none.release()
    none.feed(stream[64 + 1344 : 64 + 2 * 1344 + 10])
    direct = none.begin_direct()
    assert direct is not None and len(direct.prefix) == 10
    assert direct.remaining == 3 * PAGE - 10
    none.fail_direct(PeerBroken(UNEXPECTED_EOF))
    with pytest.raises(PeerBroken, match="Unexpected end-of-file"):
        none.end_direct()
