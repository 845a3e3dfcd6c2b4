"""The none/zlib/zstd methods: streams kept across packets, sizes, errors, bomb guard."""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib

import pytest
import zstandard

from migemu.multifd import METHOD_FLAGS, CodecError, recv_method, send_method
from migemu.multifd.methods import NoneRecv, ZlibRecv, ZstdRecv, page_count

PAGE = 4096


def make_pages(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    words = [b"migration ", b"page ", b"stream ", b"qemu ", b"zero ", b"\0" * 64]
    pages = []
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            page = bytes(PAGE)
        elif kind == 1:
            page = rng.randbytes(PAGE)
        else:
            page = b"".join(rng.choice(words) for _ in range(800))[:PAGE].ljust(PAGE, b"\0")
        pages.append(page)
    return pages


def test_flags() -> None:
    assert METHOD_FLAGS == {"none": 0x0, "zlib": 0x2, "zstd": 0x4}


@pytest.mark.parametrize(
    ("method", "level"),
    [("none", 0), ("zlib", 0), ("zlib", 1), ("zlib", 9), ("zstd", 0), ("zstd", 1), ("zstd", 9)],
)
def test_round_trip_many_packets_one_stream(method: str, level: int) -> None:
    sender = send_method(method, 3, level)
    receiver = recv_method(method, 3)
    for index in range(12):
        pages = make_pages(1 + (index * 37) % 128, seed=index)
        as_list = index % 3 == 0
        contiguous = b"".join(pages)
        payload = sender.compress(pages if as_list else bytearray(contiguous))
        assert receiver.decompress(payload, len(pages)) == contiguous


def test_inputs_are_validated() -> None:
    sender = send_method("zstd", 0)
    with pytest.raises(ValueError):
        sender.compress(b"x" * 4095)
    with pytest.raises(ValueError):
        sender.compress([b"x" * 4096, b"short"])
    with pytest.raises(ValueError):
        sender.compress(bytes(129 * PAGE))
    assert page_count(memoryview(bytes(2 * PAGE))) == 2
    with pytest.raises(ValueError):
        recv_method("zlib", 0).decompress(b"", 0)
    with pytest.raises(ValueError):
        send_method("lz4", 0)
    with pytest.raises(ValueError):
        send_method("zlib", 0, level=10)
    with pytest.raises(ValueError):
        send_method("zstd", 0, level=21)


def test_zlib_stream_shape() -> None:
    sender = send_method("zlib", 0, level=1)
    first = sender.compress(make_pages(4, 1))
    second = sender.compress(make_pages(4, 2))
    assert first[:2] == b"\x78\x01"  # zlib wrapper (not raw deflate), level 1
    assert first.endswith(b"\x00\x00\xff\xff") and second.endswith(b"\x00\x00\xff\xff")
    assert second[:1] != b"\x78"  # the header is written once per channel
    stored = send_method("zlib", 0, level=0).compress(make_pages(2, 1))
    assert stored[:2] == b"\x78\x01" and len(stored) > 2 * PAGE  # level 0: stored blocks


def test_zstd_stream_shape() -> None:
    sender = send_method("zstd", 0, level=1)
    first = sender.compress(make_pages(4, 1))
    second = sender.compress(make_pages(4, 2))
    assert first[:4] == bytes.fromhex("28b52ffd")  # one frame per channel
    assert second[:4] != bytes.fromhex("28b52ffd")
    # Level 0 is libzstd's default level 3, as for QEMU's ZSTD_initCStream(0).
    data = b"".join(make_pages(64, 5))
    zero = send_method("zstd", 0, level=0).compress(data)
    three = send_method("zstd", 0, level=3).compress(data)
    assert zero == three


@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_history_is_kept_across_packets(method: str) -> None:
    # Random pages do not compress on their own; 4 of them (16 KiB) fit zlib's 32 KiB window.
    pages = [random.Random(n).randbytes(PAGE) for n in range(4)]
    sender = send_method(method, 0, level=1)
    first = sender.compress(pages)
    second = sender.compress(pages)  # same data again: only back-references
    assert len(first) > 4 * PAGE - 100
    assert len(second) < len(first) // 10
    receiver = recv_method(method, 0)
    assert receiver.decompress(first, 4) == b"".join(pages)
    assert receiver.decompress(second, 4) == b"".join(pages)
    # A fresh decompressor cannot read packet 2 on its own: it needs packet 1's history.
    with pytest.raises(CodecError):
        recv_method(method, 0).decompress(second, 4)


@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_history_needed_beyond_the_stream_header(method: str) -> None:
    """Prime a fresh decompressor with an unrelated packet 1, then feed the real packet 2:
    it must not decode to the right pages."""
    pages = make_pages(32, seed=4)
    sender = send_method(method, 0)
    sender.compress(pages)
    second = sender.compress(pages)
    other = send_method(method, 0)
    receiver = recv_method(method, 0)
    receiver.decompress(other.compress(make_pages(32, seed=99)), 32)
    try:
        assert receiver.decompress(second, 32) != b"".join(pages)
    except CodecError:
        pass


def test_size_mismatch_messages() -> None:
    for method in ("none", "zlib", "zstd"):
        payload = send_method(method, 5).compress(make_pages(2, 1))
        with pytest.raises(CodecError) as info:
            recv_method(method, 5).decompress(payload, 3)
        assert info.value.desc == "multifd 5: packet size received 8192 size expected 12288"


@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
def test_more_data_than_pages_is_refused(method: str) -> None:
    payload = send_method(method, 2).compress(make_pages(3, 1))
    with pytest.raises(CodecError) as info:
        recv_method(method, 2).decompress(payload, 2)
    if method == "none":
        assert info.value.desc == "multifd 2: packet size received 12288 size expected 8192"
    else:
        assert info.value.desc == "multifd 2: packet decompresses to more than 8192 bytes"


def test_zlib_corrupt_payload_message() -> None:
    with pytest.raises(CodecError) as info:
        recv_method("zlib", 1).decompress(b"\x00garbage", 1)
    assert info.value.desc == "multifd 1: inflate returned -3 instead of Z_OK"


def test_zlib_finished_stream_is_stream_end() -> None:
    payload = zlib.compress(bytes(PAGE))
    with pytest.raises(CodecError) as info:
        recv_method("zlib", 0).decompress(payload, 1)
    assert info.value.desc == "multifd 0: inflate returned 1 instead of Z_OK"


def test_zstd_corrupt_payload_message() -> None:
    with pytest.raises(CodecError) as info:
        recv_method("zstd", 1).decompress(b"garbage garbage", 1)
    assert info.value.desc == "multifd 1: decompressStream returned Unknown frame descriptor"


@pytest.mark.parametrize("cls", [NoneRecv, ZlibRecv, ZstdRecv])
def test_broken_after_first_error(cls: type) -> None:
    receiver = cls(0)
    with pytest.raises(CodecError) as first:
        receiver.decompress(b"\x01\x02\x03", 1)
    with pytest.raises(CodecError) as again:
        receiver.decompress(send_method(cls.name, 0).compress(bytes(PAGE)), 1)
    assert again.value.desc == first.value.desc


def _bomb(method: str) -> bytes:
    """A payload decompressing to 256 MiB of zeros (far beyond one packet)."""
    if method == "zlib":
        stream = zlib.compressobj(9)
        chunk = bytes(1 << 20)
        parts = [stream.compress(chunk) for _ in range(256)]
        return b"".join(parts) + stream.flush(zlib.Z_SYNC_FLUSH)
    stream = zstandard.ZstdCompressor(level=3).compressobj()
    chunk = bytes(1 << 20)
    parts = [stream.compress(chunk) for _ in range(256)]
    return b"".join(parts) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_decompression_bomb_is_bounded(method: str) -> None:
    bomb = _bomb(method)
    assert len(bomb) < 1 << 20  # fits the 1 MiB a packet may carry
    receiver = recv_method(method, 0)
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="decompresses to more than 524288 bytes"):
            receiver.decompress(bomb, 128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_none_returns_pages_unchanged() -> None:
    data = os.urandom(3 * PAGE)
    assert send_method("none", 0).compress(data) == data
    assert recv_method("none", 0).decompress(memoryview(data), 3) == data
