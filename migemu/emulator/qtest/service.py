"""The ``-qtest`` socket: migemu connects out to a test harness and serves qtest on it.

libqtest listens on a unix socket and starts QEMU with ``-qtest unix:PATH``; QEMU connects
as a client before its QMP monitor does. ``services_for`` therefore connects at start-up,
synchronously, before the event loop (and so before any monitor) exists; ``QtestService``
then hands the connected socket to asyncio and feeds what arrives to ``QtestProtocol``.
This is the thin asyncio adapter of the emulator layer; the protocol lives in ``protocol``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from typing import TextIO

from migemu.emulator.cmdline import VMConfig
from migemu.emulator.machine import Machine
from migemu.emulator.qtest.memory import PhysicalMemory
from migemu.emulator.qtest.protocol import QtestLog, QtestProtocol
from migemu.emulator.runtime import Service
from migemu.emulator.startup import StartupError

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1 << 16


def connect(spec: str, prog: str) -> socket.socket:
    """Connect the ``-qtest`` chardev (``unix:PATH`` or ``tcp:HOST:PORT``), QEMU's errors."""
    tail = f'{prog}: Failed to initialize device for qtest: "{spec}"'
    head, _, options = spec.partition(",")
    if options:
        raise StartupError(f"-qtest {spec}: only client sockets without options are supported")
    if head.startswith("unix:"):
        path = head[5:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as err:
            sock.close()
            raise StartupError(
                f"Failed to connect to '{path}': {os.strerror(err.errno or 0)}\n{tail}"
            ) from err
        return sock
    if head.startswith("tcp:"):
        host, _, port = head[4:].rpartition(":")
        try:
            return socket.create_connection((host or "127.0.0.1", int(port)))
        except (OSError, ValueError) as err:
            raise StartupError(f"Failed to connect to '{head[4:]}': {err}\n{tail}") from err
    raise StartupError(f"-qtest {spec}: migemu supports unix:PATH and tcp:HOST:PORT\n{tail}")


def open_log(path: str | None) -> tuple[TextIO | None, bool]:
    """The log stream for ``-qtest-log`` (QEMU: absent -> stderr, ``none`` -> no log) and
    whether migemu owns it. ``/dev/null`` is treated as no log: nobody can tell."""
    if path is None:
        return sys.stderr, False
    if path in ("none", os.devnull):
        return None, False
    # QEMU's fopen(path, "w+"), whose failure QEMU ignores (no log). os.fdopen does not
    # insist on a seekable file, so a pipe such as /dev/fd/2 (QTEST_LOG=1) works too.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as err:
        log.debug("-qtest-log %s: %s; no log", path, err)
        return None, False
    return os.fdopen(fd, "w", encoding="latin-1"), True


class _Connection(asyncio.Protocol):
    """Answers each chunk as it arrives: one write per chunk, no task switch per command."""

    def __init__(self, protocol: QtestProtocol, lost: asyncio.Future[None]) -> None:
        self._protocol = protocol
        self._lost = lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._protocol.opened()

    def data_received(self, data: bytes) -> None:
        answer = self._protocol.feed(data)
        if answer and self.transport is not None:
            self.transport.write(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("qtest connection lost: %s", exc)
        self._protocol.closed()
        if not self._lost.done():
            self._lost.set_result(None)


class QtestService:
    """Serve qtest on an already connected socket until the peer or the process goes."""

    def __init__(
        self, sock: socket.socket, protocol: QtestProtocol, logfile: TextIO | None
    ) -> None:
        self._sock: socket.socket | None = sock
        self._protocol = protocol
        self._logfile = logfile
        self._conn: _Connection | None = None
        self._lost: asyncio.Future[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock, self._sock = self._sock, None
        assert sock is not None, "started twice"
        self._lost = loop.create_future()
        lost = self._lost
        _, self._conn = await loop.connect_accepted_socket(
            lambda: _Connection(self._protocol, lost), sock
        )

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()  # never started
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
            assert self._lost is not None
            await self._lost
        if self._logfile is not None:
            self._logfile.close()


def services_for(config: VMConfig, machine: Machine) -> list[Service]:
    """The qtest service when ``-qtest`` was given: connected now, before any monitor."""
    if config.qtest is None:
        return []
    logfile, owned = open_log(config.qtest_log)
    try:
        sock = connect(config.qtest, config.prog_name)
    except StartupError:
        if owned and logfile is not None:
            logfile.close()
        raise
    memory = PhysicalMemory.for_machine(config.machine.type, machine.ram.blocks, machine.dirty)
    protocol = QtestProtocol(memory, QtestLog(logfile) if logfile is not None else None)
    return [QtestService(sock, protocol, logfile if owned else None)]
