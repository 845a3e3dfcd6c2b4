"""Packet encode/decode throughput per method (a timing script, not a test).

Run: python3 tests/multifd/bench_packets.py [--image PATH] [--size-mib N]
Without --image, pages come from make_image.py's mix (45% zero pages are dropped, as QEMU
sends them on the main stream) when ../shared is available, else a synthetic text/random mix.
Measures one channel in one thread: ChannelEncoder.packet() and ChannelDecoder.feed().
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from migemu.multifd import PACKET_PAGES, PAGE_SIZE, ChannelDecoder, ChannelEncoder

SHARED = Path(__file__).parents[2].parent / "shared" / "reference"


def load_pages(image: str | None, size_mib: int) -> list[bytes]:
    if image is None and (SHARED / "make_image.py").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "img"
            subprocess.run(
                [sys.executable, str(SHARED / "make_image.py"), str(out), str(size_mib)],
                check=True,
                capture_output=True,
            )
            data = out.read_bytes()
    elif image is not None:
        data = Path(image).read_bytes()
    else:
        rng = random.Random(0)
        data = b"".join(
            rng.randbytes(PAGE_SIZE) if i % 3 == 0 else (b"migration page " * 300)[:PAGE_SIZE]
            for i in range(size_mib * 256)
        )
    zero = bytes(PAGE_SIZE)
    pages = [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
    return [p for p in pages if p != zero]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image")
    parser.add_argument("--size-mib", type=int, default=64)
    args = parser.parse_args()
    pages = load_pages(args.image, args.size_mib)
    packets = [pages[i : i + PACKET_PAGES] for i in range(0, len(pages), PACKET_PAGES)]
    raw_bytes = len(pages) * PAGE_SIZE
    block = {"mem0": len(pages) * PAGE_SIZE}
    print(f"{len(pages)} non-zero pages, {len(packets)} packets, {raw_bytes / 2**20:.0f} MiB")
    for method, level in (("none", 0), ("zlib", 1), ("zstd", 1)):
        enc = ChannelEncoder(0, method, level)
        start = time.perf_counter()
        wire = [enc.greeting()]
        offset = 0
        for chunk in packets:
            offsets = range(offset, offset + len(chunk) * PAGE_SIZE, PAGE_SIZE)
            offset += len(chunk) * PAGE_SIZE
            wire += enc.packet(offset // PAGE_SIZE, "mem0", offsets, chunk)
        encode_s = time.perf_counter() - start
        stream = b"".join(wire)
        dec = ChannelDecoder(method, block)
        start = time.perf_counter()
        dec.feed(stream[:64])
        dec.accept(0)
        got = 0
        for pos in range(64, len(stream), 256 * 1024):  # socket-sized reads
            for record in dec.feed(stream[pos : pos + 256 * 1024]):
                got += len(record.data)  # type: ignore[union-attr]
        decode_s = time.perf_counter() - start
        assert got == raw_bytes
        print(
            f"{method:4} level {level}: wire {len(stream) / 2**20:7.1f} MiB  "
            f"encode {raw_bytes / encode_s / 2**20:7.0f} MiB/s  "
            f"decode {raw_bytes / decode_s / 2**20:7.0f} MiB/s  (of page data)"
        )


if __name__ == "__main__":
    main()
