"""Differential test: streams built by our encoders, sent to a real QEMU 7.2 destination.

For each method (none, zlib, zstd) the main stream and two multifd channels are encoded the
way a 7.2 source lays them out (zero pages on main, data pages on multifd, one SYNC per
channel per EOS, a SYNC riding on a data packet, an empty flags-0 packet), written
concurrently over loopback TCP, and the destination must reach ``completed``/``running``
with its RAM equal to the image. Skipped when qemu-system-x86_64 is not installed.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from multifd_support import DEADLINE_S, QEMU, QMP, free_port, make_image, start_qemu, wait_status
from multifd_support import QEMU_RAM_SIZE as RAM_SIZE

from migemu.multifd import PAGE_SIZE, ChannelEncoder, PacketNumbers
from migemu.multifd.mainstream import MainStreamEncoder

pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


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


@pytest.mark.parametrize("method", ["none", "zlib", "zstd", "zlib/isal", "zlib/zlib-ng"])
def test_real_qemu_accepts_our_streams(method: str, tmp_path: Path, monkeypatch) -> None:
    """zlib/BACKEND: deflated by a drop-in library (MIGEMU_DEFLATE); QEMU inflates it."""
    method, _, backend = method.partition("/")
    if backend:
        pytest.importorskip({"isal": "isal", "zlib-ng": "zlib_ng"}[backend])
        monkeypatch.setenv("MIGEMU_DEFLATE", backend)
    image = make_image()
    main, channels = build_streams(image, method)
    ram = tmp_path / "dst-ram"
    ram.write_bytes(bytes(RAM_SIZE))
    qmp_path = tmp_path / "qmp.sock"
    proc = start_qemu(ram, qmp_path)
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
