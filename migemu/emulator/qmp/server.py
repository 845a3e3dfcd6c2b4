"""asyncio adapter for QMP monitors: unix/TCP listeners and client-mode chardevs (emulator layer).

Like a QEMU socket chardev, one endpoint serves one client at a time: a second client is
accepted by the kernel but gets its greeting only when the first one leaves, and every new
client starts a fresh session (greeting, negotiation). Bytes go to the sans-IO reader and
session; responses and events go out through ``encode_message`` (QEMU's formatting, CRLF).
Events may be emitted from any thread; they hop onto the loop before touching a transport.
Unix-socket monitors use ``unixfd``'s transport, which also reads SCM_RIGHTS descriptors: a
command sees them (and its monitor's ``getfd`` table) through ``monitor_fds.current()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from migemu.emulator import monitor_fds
from migemu.emulator.events import Event, EventBus
from migemu.emulator.migration import faults
from migemu.emulator.monitor_fds import MonitorFdContext, NamedFds, ReceivedFds
from migemu.emulator.qmp.session import QMPSession
from migemu.emulator.qmp.unixfd import UnixFdServer, connect_unix, listen_unix
from migemu.emulator.startup import StartupError
from migemu.emulator.unixsock import owner_only
from migemu.qapi.qjson import JSONStreamParser, encode_message

log = logging.getLogger(__name__)

SessionFactory = Callable[[], QMPSession]


@dataclass(frozen=True)
class SocketSpec:
    """Where a monitor lives: a unix path or a TCP host/port, listening or connecting."""

    path: str | None = None
    host: str | None = None
    port: int | None = None
    server: bool = True
    wait: bool = False
    stdio: bool = False  # -qmp stdio: the process's stdin/stdout
    label: str | None = None  # the chardev id (query-chardev)
    fd: int | None = None  # an inherited, already listening socket (-chardev socket,fd=N)

    def describe(self) -> str:
        if self.stdio:
            return "stdio"
        if self.path is not None:
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}"


class QMPConnection(asyncio.Protocol):
    """One client connection; it becomes active (greeted) when its endpoint says so."""

    def __init__(
        self, endpoint: MonitorEndpoint, writer: asyncio.WriteTransport | None = None
    ) -> None:
        self.endpoint = endpoint
        self.writer = writer  # stdio: output goes to another transport than input
        self.transport: asyncio.Transport | None = None
        self.session: QMPSession | None = None
        self.parser = JSONStreamParser()
        self._backlog: list[bytes] = []
        self.received = ReceivedFds()  # SCM_RIGHTS descriptors not yet taken by a command
        self.fd_context = MonitorFdContext(endpoint.named_fds, self.received)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.endpoint.connected(self)

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            self._backlog.append(data)  # not served yet: QEMU would not read it yet either
            return
        self._feed(data)

    def fds_received(self, fds: list[int]) -> None:
        self.received.add(fds)

    def eof_received(self) -> bool:
        if self.writer is not None:  # stdin closed: QEMU treats it as the client leaving
            self.endpoint.loop.call_soon(self.endpoint.stdio_closed)
        return False

    # A client that sends without reading our replies stops being read once the transport's
    # write buffer passes asyncio's high-water mark: its memory use stays bounded.
    def pause_writing(self) -> None:
        self._reading(False)

    def resume_writing(self) -> None:
        self._reading(self.session is not None)

    def _reading(self, on: bool) -> None:
        transport = self.transport
        if not isinstance(transport, asyncio.ReadTransport) or transport.is_closing():
            return
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.disconnected(self)
        self.session = None
        self.transport = None
        self.received.clear()

    # endpoint side
    def activate(self, session: QMPSession) -> None:
        self.session = session
        self._reading(True)
        self._send(session.greeting())
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            self._feed(data)

    def deliver_event(self, event: Event) -> None:
        if self.session is not None and self.session.negotiated:
            self._send(event)

    def _feed(self, data: bytes) -> None:
        for item in self.parser.feed(data):
            session = self.session
            if session is None or self.transport is None or self.transport.is_closing():
                return
            token = monitor_fds.current_monitor.set(self.fd_context)
            try:
                response = session.handle(item)
            finally:
                monitor_fds.current_monitor.reset(token)
            if response is not None:
                self._send(response)

    def _send(self, obj: object) -> None:
        out = self.writer if self.writer is not None else self.transport
        if out is not None and not out.is_closing():
            out.write(encode_message(obj))


class _StdoutWriter:
    """stdout as a write transport; blocking writes are fine for one monitor's replies, and
    work whatever stdout is (pipe, file, terminal)."""

    def __init__(self) -> None:
        self._closed = False

    def write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
        except OSError:
            self._closed = True

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True


class _StdioPipe:
    """stdin read by a thread (it may be a regular file, which the event loop cannot
    watch), data handed to the connection on the loop."""

    def __init__(self, conn: QMPConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self._closing = False

    @classmethod
    def open(cls, conn: QMPConnection, loop: asyncio.AbstractEventLoop) -> None:
        pipe = cls(conn, loop)
        conn.connection_made(pipe)  # type: ignore[arg-type]
        threading.Thread(target=pipe._read, name="qmp-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:
                self.loop.call_soon_threadsafe(self.conn.eof_received)
                return
            self.loop.call_soon_threadsafe(self.conn.data_received, data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def write(self, data: bytes) -> None:  # output goes through the connection's writer
        raise RuntimeError("write to stdin")


class MonitorEndpoint:
    """One QMP chardev: serves its connections one at a time, in arrival order."""

    def __init__(
        self,
        spec: SocketSpec,
        session_factory: SessionFactory,
        events: EventBus,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.spec = spec
        self.session_factory = session_factory
        self.events = events
        self.loop = loop
        self.active: QMPConnection | None = None
        self.pending: list[QMPConnection] = []
        self.server: asyncio.AbstractServer | None = None
        self.unix_server: UnixFdServer | None = None
        self.named_fds = NamedFds()  # getfd's table: the monitor's, kept across clients
        self.first_client = asyncio.Event()
        self._loop_thread = threading.get_ident()
        events.subscribe(self._on_event)

    async def start(self) -> None:
        spec = self.spec
        if spec.stdio:
            _StdioPipe.open(QMPConnection(self, _StdoutWriter()), self.loop)
            return
        if spec.server and spec.fd is not None:
            try:
                sock = socket.socket(fileno=spec.fd)
            except OSError as err:
                raise StartupError(f"chardev fd={spec.fd}: {err.strerror}") from err
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                self.server = await self.loop.create_unix_server(
                    lambda: QMPConnection(self), sock=sock
                )
            else:
                self.server = await self.loop.create_server(lambda: QMPConnection(self), sock=sock)
            if spec.wait:
                await self.first_client.wait()
        elif spec.server:
            if spec.path is not None:
                if os.path.exists(spec.path):
                    os.unlink(spec.path)  # as QEMU does before binding a unix listener
                with owner_only():
                    self.unix_server = listen_unix(
                        self.loop, spec.path, lambda: QMPConnection(self)
                    )
            else:
                self.server = await self.loop.create_server(
                    lambda: QMPConnection(self), spec.host or "127.0.0.1", spec.port
                )
            if spec.wait:
                await self.first_client.wait()
        else:
            try:
                if spec.path is not None:
                    await connect_unix(self.loop, spec.path, lambda: QMPConnection(self))
                else:
                    await self.loop.create_connection(
                        lambda: QMPConnection(self), spec.host, spec.port
                    )
            except OSError as err:
                target = spec.path if spec.path is not None else f"{spec.host}:{spec.port}"
                raise StartupError(f"Failed to connect to '{target}': {err.strerror}") from err

    def bound_port(self) -> int | None:
        if self.server is None or not self.server.sockets:
            return None
        name = self.server.sockets[0].getsockname()
        return name[1] if isinstance(name, tuple) else None

    def connected(self, conn: QMPConnection) -> None:
        self.first_client.set()
        if self.active is None:
            self.active = conn
            conn.activate(self.session_factory())
        else:
            self.pending.append(conn)
            conn._reading(False)  # not served yet: QEMU does not read it either

    def stdio_closed(self) -> None:
        """End of stdin on a ``-qmp stdio`` monitor: nothing more will be read."""
        if self.active is not None:
            self.active.session = None

    def disconnected(self, conn: QMPConnection) -> None:
        if conn in self.pending:
            self.pending.remove(conn)
            return
        if conn is self.active:
            self.active = None
            while self.pending and self.active is None:
                nxt = self.pending.pop(0)
                if nxt.transport is not None and not nxt.transport.is_closing():
                    self.active = nxt
                    nxt.activate(self.session_factory())

    def _on_event(self, event: Event) -> None:
        if faults.defer_event(self.loop, self._deliver, event, self):
            return
        if threading.get_ident() == self._loop_thread:
            self._deliver(event)
        else:
            self.loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: Event) -> None:
        if self.active is not None:
            self.active.deliver_event(event)

    async def close(self) -> None:
        self.events.unsubscribe(self._on_event)
        for conn in [self.active, *self.pending]:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        if self.unix_server is not None:
            self.unix_server.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.server is not None or self.unix_server is not None:
            if self.spec.path is not None and self.spec.server:
                try:
                    os.unlink(self.spec.path)
                except FileNotFoundError:
                    pass
