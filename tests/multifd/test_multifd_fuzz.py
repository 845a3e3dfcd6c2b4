"""Property tests: mutated real packets and arbitrary bytes fed to every decoder end in a
valid record or one of our errors -- never another exception, never a page outside its
block, never an unbounded wait or allocation."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multifd_support import CAPTURES, RAM_SIZE

from migemu.multifd import (
    MAX_COMPRESSED_PAYLOAD,
    PACKET_HEADER_WIRE_SIZE,
    PACKET_PAGES,
    PAGE_SIZE,
    ChannelDecoder,
    ChannelEncoder,
    MultiFDError,
    MultiFDInit,
    ReceivedPacket,
    check_header,
    check_init,
    decode_header,
    decode_init,
    recv_method,
)
from migemu.multifd.mainstream import MainStreamDecoder, MainStreamEncoder, RamPage, RamZero

BLOCKS = {"mem0": RAM_SIZE}
FUZZ = settings(
    max_examples=int(os.environ.get("MIGEMU_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _channel_sample(method: str) -> bytes:
    """A short real-looking channel: from a capture when available, else generated."""
    name = {"none": "mfd2-none-4m", "zstd": "mfd2-zstd-4m"}.get(method)
    if name and (CAPTURES / name).is_dir():
        data = (CAPTURES / name / "conn1-mfd.bin").read_bytes()
        # greeting, SYNC, first data packet and the header of the next one
        decoder = ChannelDecoder(method, BLOCKS, pause_at_sync=False)
        decoder.feed(data[:64])
        decoder.accept(decoder.greeting.channel_id)  # type: ignore[union-attr]
        end = 64 + 2 * PACKET_HEADER_WIRE_SIZE
        first = decode_header(data[end - PACKET_HEADER_WIRE_SIZE : end])
        size = first.next_packet_size if method != "none" else first.normal_pages * PAGE_SIZE
        return data[: end + size + PACKET_HEADER_WIRE_SIZE]
    rng = random.Random(1)
    enc = ChannelEncoder(1, method)
    out = [enc.greeting()]
    for num in range(3):
        offsets = sorted(rng.sample(range(0, RAM_SIZE, PAGE_SIZE), 16))
        pages = [rng.randbytes(256) * 16 for _ in offsets]
        out += enc.packet(num, "mem0", offsets, pages, sync=num == 1)
    return b"".join(out)


SAMPLES = {method: _channel_sample(method) for method in ("none", "zlib", "zstd")}


def _drive_channel(method: str, data: bytes, chunk: int) -> None:
    decoder = ChannelDecoder(method, BLOCKS)
    try:
        for start in range(0, len(data), chunk):
            pending = decoder.feed(data[start : start + chunk])
            while pending:
                record = pending.pop(0)
                if isinstance(record, MultiFDInit):
                    decoder.accept(check_init(record, channels=2))
                else:
                    _check_packet(record)
                    if decoder.paused:
                        decoder.release()
                if not pending:
                    pending = decoder.feed(b"")
            assert decoder.needed() <= PACKET_HEADER_WIRE_SIZE + MAX_COMPRESSED_PAYLOAD
        decoder.feed_eof()
    except MultiFDError:
        pass


def _check_packet(packet: ReceivedPacket) -> None:
    header = packet.header
    assert header.normal_pages <= PACKET_PAGES
    assert len(packet.data) == header.normal_pages * PAGE_SIZE
    if header.normal_pages:
        limit = BLOCKS[header.ramblock]
        assert all(0 <= o <= limit - PAGE_SIZE and o % PAGE_SIZE == 0 for o in header.offsets)


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[int, int, int]]:
    count = draw(st.integers(1, 8))
    return [
        (draw(st.integers(0, size - 1)), draw(st.integers(0, 255)), draw(st.integers(0, 2)))
        for _ in range(count)
    ]


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for position, value, kind in edits:
        position %= max(1, len(out))
        if kind == 0:
            out[position] = value
        elif kind == 1:
            del out[position : position + value]
        else:
            out[position:position] = bytes([value]) * (value % 7 + 1)
    return bytes(out)


@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
@FUZZ
@given(data=st.data())
def test_mutated_channel(method: str, data: st.DataObject) -> None:
    sample = SAMPLES[method]
    edits = data.draw(mutations(len(sample)))
    # Mutations concentrated on the headers find more branches.
    if data.draw(st.booleans()):
        edits = [(p % (64 + 2 * PACKET_HEADER_WIRE_SIZE), v, k) for p, v, k in edits]
    chunk = data.draw(st.sampled_from([1 << 21, 1000, 4097]))
    _drive_channel(method, _mutate(sample, edits), chunk)


@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
@FUZZ
@given(payload=st.binary(max_size=3000), chunk=st.integers(1, 4000))
def test_arbitrary_bytes_after_greeting(method: str, payload: bytes, chunk: int) -> None:
    _drive_channel(method, ChannelEncoder(0).greeting() + payload, chunk)


@FUZZ
@given(raw=st.binary(min_size=64, max_size=64))
def test_arbitrary_greeting(raw: bytes) -> None:
    try:
        check_init(decode_init(raw), channels=4, taken={1})
    except MultiFDError:
        pass


@FUZZ
@given(raw=st.binary(min_size=PACKET_HEADER_WIRE_SIZE, max_size=PACKET_HEADER_WIRE_SIZE))
def test_arbitrary_header(raw: bytes) -> None:
    try:
        header = decode_header(raw)
        check_header(header, BLOCKS)
    except MultiFDError:
        return
    assert header.normal_pages <= PACKET_PAGES


@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
@FUZZ
@given(payload=st.binary(max_size=5000), pages=st.integers(1, PACKET_PAGES))
def test_arbitrary_payload(method: str, payload: bytes, pages: int) -> None:
    receiver = recv_method(method, 0)
    try:
        out = receiver.decompress(payload, pages)
    except MultiFDError:
        return
    assert len(out) == pages * PAGE_SIZE


@pytest.mark.parametrize("method", ["zlib", "zstd"])
@FUZZ
@given(data=st.data())
def test_mutated_payload_keeps_its_size(method: str, data: st.DataObject) -> None:
    from migemu.multifd import send_method

    pages = [random.Random(n).randbytes(512) * 8 for n in range(8)]
    payload = send_method(method, 0).compress(pages)
    mutated = _mutate(payload, data.draw(mutations(len(payload))))
    try:
        out = recv_method(method, 0).decompress(mutated, 8)
    except MultiFDError:
        return
    assert len(out) == 8 * PAGE_SIZE


def _main_sample() -> bytes:
    enc = MainStreamEncoder()
    return b"".join(
        [
            enc.header(),
            enc.ram_start([("mem0", RAM_SIZE)]),
            enc.ram_part(),
            enc.ram_zero_pages("mem0", [0, PAGE_SIZE, 5 * PAGE_SIZE]),
            enc.ram_page("mem0", 2 * PAGE_SIZE, bytes(range(256)) * 16),
            enc.ram_close(),
            enc.ram_end(),
            enc.ram_close(),
            enc.timer(1, 2),
            enc.globalstate(),
            enc.eof(),
            enc.vmdescription(),
        ]
    )


MAIN = _main_sample()


def _drive_main(data: bytes, chunk: int, blocks: dict[str, int] | None) -> None:
    decoder = MainStreamDecoder(ram_blocks=blocks)
    try:
        for start in range(0, len(data), chunk):
            for record in decoder.feed(data[start : start + chunk]):
                if isinstance(record, RamZero | RamPage):
                    assert decoder.ram_blocks is not None
                    limit = decoder.ram_blocks[record.block]
                    assert 0 <= record.offset <= limit - PAGE_SIZE
                if isinstance(record, RamPage):
                    assert len(record.data) == PAGE_SIZE
        decoder.feed_eof()
    except MultiFDError:
        pass


@FUZZ
@given(data=st.data())
def test_mutated_main_stream(data: st.DataObject) -> None:
    # Most of MAIN is one PAGE record; aim the edits at the structure around it too.
    edits = data.draw(mutations(len(MAIN)))
    if data.draw(st.booleans()):
        edits = [(p % 150 if p % 2 else len(MAIN) - 1 - p % 700, v, k) for p, v, k in edits]
    chunk = data.draw(st.sampled_from([1 << 20, 1, 13]))
    blocks = data.draw(st.sampled_from([None, BLOCKS]))
    _drive_main(_mutate(MAIN, edits), chunk, blocks)


@FUZZ
@given(payload=st.binary(max_size=2000), chunk=st.integers(1, 3000))
def test_arbitrary_bytes_main_stream(payload: bytes, chunk: int) -> None:
    _drive_main(payload, chunk, None)
    _drive_main(MAIN[:17] + payload, chunk, BLOCKS)
    _drive_main(MAIN[:63] + payload, chunk, None)
