"""Many hostile QMP clients against a real process: it keeps serving, its memory stays bounded.

One monitor socket gets 40 concurrent clients: one is served, 39 wait (QEMU serves one client
per monitor); all of them send junk, huge lines and deep nesting, and none reads its replies.
Meanwhile the test's own client on another monitor keeps getting correct replies, the
process's RSS stays bounded (a client that does not read stops being read; one that is not
served is not read at all), and once the junk clients leave the flood socket serves again.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio

CLIENTS = 40
JUNK_MIB = 24  # per client


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def flood(path: Path, seed: int, stop: asyncio.Event) -> int:
    """Send junk without reading; returns the bytes the server took."""
    rng = random.Random(seed)
    reader, writer = await asyncio.open_unix_connection(str(path))
    pieces = [b"}" * 65536, b"\xff\xfe" * 32768, b"[" * 4096, b'{"execute": "' + b"a" * 65536,
              b"9" * 65536, b'{"execute": "query-status"}' * 2000]  # fmt: skip
    sent = 0
    try:
        while sent < JUNK_MIB << 20 and not stop.is_set():
            writer.write(rng.choice(pieces))
            drain = asyncio.ensure_future(writer.drain())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([drain, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not drain.done():
                drain.cancel()  # the server stopped reading us: that is the point
                break
            sent += 65536
    finally:
        writer.transport.abort()
    return sent


async def test_hostile_clients(cluster, tmp_path):
    flood_sock = tmp_path / "flood.sock"
    src = await cluster.start(
        "src", mem_mib=8, extra=["-qmp", f"unix:{flood_sock},server=on,wait=off"]
    )
    pid = src.proc.pid
    before = rss_mib(pid)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(flood(flood_sock, i, stop)) for i in range(CLIENTS)]
    end = time.monotonic() + 5
    peak = before
    while time.monotonic() < end:
        assert (await src.cmd("query-status"))["status"] == "running"
        assert (await src.cmd("query-migrate")) == {}
        peak = max(peak, rss_mib(pid))
    stop.set()
    sent = await asyncio.gather(*tasks)
    grown = peak - before
    print(f"sent {sum(sent) >> 20} MiB, RSS peak +{grown:.0f} MiB")
    assert grown < 200, f"RSS grew by {grown:.0f} MiB"
    # the flood socket serves a well-behaved client again
    reader, writer = await asyncio.open_unix_connection(str(flood_sock))
    greeting = json.loads(await asyncio.wait_for(reader.readline(), 10))
    assert "QMP" in greeting
    writer.write(b'{"execute": "qmp_capabilities"}\r\n{"execute": "query-status", "id": 7}\r\n')
    assert json.loads(await reader.readline()) == {"return": {}}
    reply = json.loads(await reader.readline())
    assert reply["id"] == 7 and reply["return"]["status"] == "running"
    writer.close()
    await writer.wait_closed()
    assert src.proc.poll() is None
