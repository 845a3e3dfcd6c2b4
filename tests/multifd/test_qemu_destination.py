"""Differential test: streams built by our encoders, sent to a real QEMU 7.2 destination.

For each method (none, zlib, zstd) the main stream and two multifd channels are encoded the
way a 7.2 source lays them out (zero pages on main, data pages on multifd, one SYNC per
channel per EOS, a SYNC riding on a data packet, an empty flags-0 packet), written
concurrently over loopback TCP, and the destination must reach ``completed``/``running``
with its RAM equal to the image. Skipped when qemu-system-x86_64 is not installed.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from migemu.multifd import PAGE_SIZE, ChannelEncoder, PacketNumbers
from migemu.multifd.mainstream import MainStreamEncoder

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")

RAM_SIZE = 4 << 20
DEADLINE_S = 20.0


def make_image() -> bytes:
    rng = random.Random(7)
    pages = []
    for index in range(RAM_SIZE // PAGE_SIZE):
        kind = (index // 5) % 4
        if kind in (0, 3) and index % 7:
            pages.append(bytes(PAGE_SIZE))
        elif kind == 1:
            pages.append(rng.randbytes(PAGE_SIZE))
        else:
            pages.append((f"page {index} of the migemu image ".encode() * 200)[:PAGE_SIZE])
    return b"".join(pages)


def build_streams(image: bytes, method: str) -> tuple[bytes, list[bytes]]:
    zero = bytes(PAGE_SIZE)
    offsets = range(0, RAM_SIZE, PAGE_SIZE)
    zeros = [o for o in offsets if image[o : o + PAGE_SIZE] == zero]
    data = [o for o in offsets if image[o : o + PAGE_SIZE] != zero]
    enc = MainStreamEncoder()
    main = b"".join(
        [
            enc.header(),
            enc.ram_start([("mem0", RAM_SIZE)]),
            enc.ram_part(),
            enc.ram_zero_pages("mem0", zeros),
            enc.ram_close(),
            enc.ram_end(),
            enc.ram_close(),
            enc.timer(),
            enc.globalstate(),
            enc.eof(),
            enc.vmdescription(),
        ]
    )
    numbers = PacketNumbers()
    channels = [ChannelEncoder(i, method, level=1) for i in range(2)]
    wire: list[list[bytes]] = [[c.greeting()] for c in channels]
    for index, channel in enumerate(channels):  # sync point 1: header-only SYNC
        wire[index] += channel.packet(numbers.next(), sync=True)
    batches = [data[i : i + 128] for i in range(0, len(data), 128)]
    for number, batch in enumerate(batches):
        index = number % 2
        last_of_channel = number >= len(batches) - 2
        pages = [image[o : o + PAGE_SIZE] for o in batch]
        sync = last_of_channel and index == 0  # sync point 2 rides on a data packet
        wire[index] += channels[index].packet(numbers.next(), "mem0", batch, pages, sync=sync)
    wire[0] += channels[0].packet(numbers.next())  # an empty flags-0 packet, like 7.2
    wire[1] += channels[1].packet(numbers.next(), sync=True)  # sync point 2
    for index, channel in enumerate(channels):  # sync point 3
        wire[index] += channel.packet(numbers.next(), sync=True)
    return main, [b"".join(parts) for parts in wire]


class QMP:
    """A minimal synchronous QMP client (the test must not depend on other layers)."""

    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.file = self.sock.makefile("rwb")
        self._read()
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            message = json.loads(self.file.readline())
            if "event" not in message:
                return message

    def cmd(self, name: str, **arguments: object) -> object:
        self.file.write(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        assert "error" not in reply, reply
        return reply["return"]


def wait_status(qmp: QMP, *wanted: str) -> str | None:
    """Poll the destination's query-migrate until its status is one of ``wanted``."""
    deadline = time.monotonic() + DEADLINE_S
    status = None
    while time.monotonic() < deadline:
        status = qmp.cmd("query-migrate").get("status")  # type: ignore[union-attr]
        if status in wanted:
            break
        time.sleep(0.01)
    return status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
def test_real_qemu_accepts_our_streams(method: str, tmp_path: Path) -> None:
    image = make_image()
    main, channels = build_streams(image, method)
    ram = tmp_path / "dst-ram"
    ram.write_bytes(bytes(RAM_SIZE))
    qmp_path = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [
            str(QEMU),
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "4M",
            "-object",
            f"memory-backend-file,id=mem0,size=4M,mem-path={ram},share=on",
            "-machine",
            "memory-backend=mem0",
            "-qmp",
            f"unix:{qmp_path},server=on,wait=off",
            "-incoming",
            "defer",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        qmp = QMP(qmp_path)
        qmp.cmd(
            "migrate-set-capabilities",
            capabilities=[{"capability": "multifd", "state": True}],
        )
        qmp.cmd("migrate-set-parameters", **{"multifd-channels": 2, "multifd-compression": method})
        port = free_port()
        qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")

        main_sock = socket.create_connection(("127.0.0.1", port))
        # QEMU 7.2 takes the first connection it accepts as main. connect() returns once the
        # handshake is done, so main is already queued, and the accept queue is FIFO.
        socks = [main_sock] + [socket.create_connection(("127.0.0.1", port)) for _ in channels]
        payloads = [main, *channels]
        errors: list[BaseException] = []

        def send(sock: socket.socket, data: bytes) -> None:
            try:
                sock.sendall(data)
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [
            threading.Thread(target=send, args=pair) for pair in zip(socks, payloads, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE_S)
        for sock in socks:
            sock.close()
        assert not errors

        assert wait_status(qmp, "completed", "failed") == "completed"
        assert qmp.cmd("query-status")["status"] == "running"  # type: ignore[index]
        assert ram.read_bytes() == image
        qmp.cmd("quit")
        proc.wait(DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == 0, output
