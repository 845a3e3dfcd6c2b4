"""Resource limits: decompression bombs, socket permissions, loopback-only listeners.

A packet can never expand beyond its page count (zlib and zstd bombs stop at one packet's
worth), migration and QMP unix sockets are created 0600, and a TCP listener without a host
binds to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import stat
import zlib
from pathlib import Path

import pytest
import zstandard

from migemu.emulator.events import EventBus
from migemu.emulator.machine import Machine, MachineOptions, version_info
from migemu.emulator.migration.link import Listener
from migemu.emulator.migration.uri import parse_uri
from migemu.emulator.qmp.server import MonitorEndpoint, SocketSpec
from migemu.emulator.qmp.session import QMPSession
from migemu.multifd import PAGE_SIZE, MultiFDError, recv_method

BOMB = 256 << 20  # 256 MiB of zeros compress to a few hundred KiB


@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_decompression_bomb_stops_at_the_packet_size(method: str) -> None:
    if method == "zlib":
        c = zlib.compressobj(9)
        payload = c.compress(bytes(BOMB)) + c.flush(zlib.Z_SYNC_FLUSH)
    else:
        payload = zstandard.ZstdCompressor(level=19).compress(bytes(BOMB))
    dec = recv_method(method, 0)
    with pytest.raises(MultiFDError) as err:
        dec.decompress(payload, 2)
    assert "more than 8192 bytes" in err.value.desc or "decompress" in err.value.desc


def test_one_page_payload_decompresses() -> None:
    c = zlib.compressobj(1)
    payload = c.compress(bytes(PAGE_SIZE)) + c.flush(zlib.Z_SYNC_FLUSH)
    assert recv_method("zlib", 0).decompress(payload, 1) == bytes(PAGE_SIZE)


def test_migration_unix_listener_is_0600(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        listener = Listener(parse_uri(f"unix:{tmp_path / 'mig.sock'}"))
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "mig.sock").st_mode) == 0o600
    finally:
        listener.close()
    assert not (tmp_path / "mig.sock").exists()


def test_migration_tcp_listener_defaults_to_loopback() -> None:
    listener = Listener(parse_uri("tcp::0"))
    try:
        assert listener.sock.getsockname()[0] == "127.0.0.1"
    finally:
        listener.close()


async def test_qmp_listeners(tmp_path: Path) -> None:
    machine = Machine(MachineOptions())
    loop = asyncio.get_running_loop()

    def session() -> QMPSession:
        return QMPSession(machine.dispatcher, version_info())

    old = os.umask(0)
    try:
        unix = MonitorEndpoint(SocketSpec(path=str(tmp_path / "q.sock")), session, EventBus(), loop)
        await unix.start()
    finally:
        os.umask(old)
    tcp = MonitorEndpoint(SocketSpec(port=0), session, EventBus(), loop)
    await tcp.start()
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "q.sock").st_mode) == 0o600
        assert tcp.server is not None
        assert tcp.server.sockets[0].getsockname()[0] == "127.0.0.1"
    finally:
        await unix.close()
        await tcp.close()
