"""HMP monitors on character devices: stdio, unix and TCP sockets (emulator layer).

``HMPMonitor`` is the sans-IO core of one readline monitor, as QEMU 7.2's
``monitor/hmp.c`` runs it: a client that opens the chardev gets the banner and the prompt,
its bytes go through the line editor one at a time, and while a command runs (or a
synchronous ``migrate`` waits, polled every second) the monitor is suspended: input stays
queued and nothing is echoed. ``quit`` suspends it for good. Output uses CRLF line ends and
carries no events. The adapters below are thin: a socket chardev serves one client at a
time, like the QMP endpoints; ``stdio`` reads fd 0 and writes fd 1, with the terminal set
up the way QEMU's stdio chardev does (raw input, output post-processing kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from migemu.emulator.hmp.console import HMPConsole
from migemu.emulator.hmp.mux import Mux
from migemu.emulator.hmp.readline import ReadLine
from migemu.emulator.hmp.telnet import TELNET_INIT, TelnetFilter
from migemu.emulator.qmp.server import SocketSpec
from migemu.emulator.startup import StartupError
from migemu.emulator.unixsock import owner_only

if TYPE_CHECKING:
    from migemu.emulator.cmdline import VMConfig
    from migemu.emulator.machine import Machine
    from migemu.emulator.runtime import Service

QEMU_VERSION_TEXT = "7.2.22"
BANNER = f"QEMU {QEMU_VERSION_TEXT} monitor - type 'help' for more information\n"
MIGRATE_POLL_S = 1.0  # hmp_migrate_status_cb's period
RUNNING_STATUSES = ("setup", "active")
# The monitor's text is bytes: typed bytes are latin-1 characters in the line editor.
WIRE_ENCODING = "latin-1"

Write = Callable[[bytes], None]
Schedule = Callable[[float, Callable[[], None]], object]


def to_wire(text: str) -> bytes:
    """Monitor text -> bytes, ``\\n`` -> CRLF (monitor_puts)."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode(WIRE_ENCODING, "replace")


class HMPMonitor:
    """One readline HMP monitor: line editor, console, suspend state, current client."""

    def __init__(
        self,
        machine: Machine,
        schedule: Schedule,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.machine = machine
        self.console = HMPConsole(machine, interactive=True, history=self._history)
        self.readline = ReadLine(self.console.complete)
        self.schedule = schedule
        self.report = report or (lambda text: print(text, file=sys.stderr, flush=True))
        self.suspended = 0
        self.quitting = False
        self.pending = bytearray()
        self.write: Write | None = None
        self.on_resume: Callable[[], None] | None = None  # a mux reads again

    def _history(self) -> list[str]:
        return list(self.readline.history)

    # -- the chardev's events ----------------------------------------------------------------

    def opened(self, write: Write) -> None:
        """CHR_EVENT_OPENED: a client is there; greet it with the banner and a prompt."""
        self.write = write
        self.pending.clear()
        self._emit(BANNER)
        if not self.quitting:
            self.readline.restart()
            self.readline.show_prompt()
            self._flush_readline()

    def closed(self) -> None:
        """CHR_EVENT_CLOSED: the client left; what it typed but was not read is gone."""
        self.write = None
        self.pending.clear()

    def feed(self, data: bytes) -> None:
        self.pending += data
        self._pump()

    # -- internals ---------------------------------------------------------------------------

    def _emit(self, text: str) -> None:
        if self.write is not None and text:
            self.write(to_wire(text))

    def _flush_readline(self) -> None:
        self._emit(self.readline.take_output())

    def _pump(self) -> None:
        while self.pending and not self.suspended and not self.quitting and self.write:
            ch = self.pending.pop(0)
            line = self.readline.handle_byte(ch)
            self._flush_readline()
            if line is not None:
                self._command(line.encode(WIRE_ENCODING).decode("utf-8", "surrogateescape"))

    def _command(self, line: str) -> None:
        result = self.console.run(line)
        if self.write is not None and result.text:
            self.write(result.text.encode("utf-8", "surrogateescape"))
        if result.suspend:
            self.quitting = True
            return
        if result.wait_migration:
            self.suspended += 1
            self.schedule(0.0, self._poll_migration)
            return
        self.readline.show_prompt()
        self._flush_readline()

    def _poll_migration(self) -> None:
        info = self.console.qmp("query-migrate")
        if info.get("status", "setup") in RUNNING_STATUSES:
            self.schedule(MIGRATE_POLL_S, self._poll_migration)
            return
        if "error-desc" in info:
            self.report(f"{self.machine.prog_name}: {info['error-desc']}")
        self.resume()

    def resume(self) -> None:
        self.suspended -= 1
        if self.suspended == 0 and not self.quitting:
            self.readline.show_prompt()
            self._flush_readline()
            self._pump()
            if self.on_resume is not None:
                self.on_resume()

    # -- a mux's focus (CHR_EVENT_MUX_OUT / MUX_IN) -------------------------------------------

    def focus_out(self) -> None:
        if self.suspended == 0:
            self._emit("\n")
        self.suspended += 1

    def focus_in(self) -> None:
        self.readline.restart()
        self.resume()


# --- sockets ----------------------------------------------------------------------------------


class _HMPConnection(asyncio.Protocol):
    def __init__(self, endpoint: HMPSocketService) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.backlog = bytearray()
        self.active = False
        self.telnet = TelnetFilter() if endpoint.telnet else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.endpoint.connected(self)

    def data_received(self, data: bytes) -> None:
        if self.telnet is not None and self.active:
            data = self.telnet.feed(data)
        if self.active:
            self.endpoint.monitor.feed(data)
        else:
            self.backlog += data  # not served yet: QEMU would not read it yet either

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.disconnected(self)
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def activate(self) -> None:
        self.active = True
        if self.telnet is not None:
            self.write(TELNET_INIT)
        self.endpoint.monitor.opened(self.write)
        backlog, self.backlog = bytes(self.backlog), bytearray()
        if self.telnet is not None:
            backlog = self.telnet.feed(backlog)
        if backlog:
            self.endpoint.monitor.feed(backlog)


class HMPSocketService:
    """An HMP monitor on a unix or TCP socket chardev: one client at a time, in order."""

    def __init__(self, machine: Machine, spec: SocketSpec, telnet: bool = False) -> None:
        self.machine = machine
        self.spec = spec
        self.telnet = telnet
        self.monitor = HMPMonitor(machine, self._schedule)
        self.active: _HMPConnection | None = None
        self.pending: list[_HMPConnection] = []
        self.server: asyncio.AbstractServer | None = None
        self.first_client = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()

    def _schedule(self, delay_s: float, fn: Callable[[], None]) -> object:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay_s, lambda: (self._timers.discard(handle), fn()))
        self._timers.add(handle)
        return handle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        if spec.server:
            if spec.path is not None:
                if os.path.exists(spec.path):
                    os.unlink(spec.path)
                with owner_only():
                    self.server = await loop.create_unix_server(
                        lambda: _HMPConnection(self), spec.path
                    )
            else:
                self.server = await loop.create_server(
                    lambda: _HMPConnection(self), spec.host or "127.0.0.1", spec.port
                )
            if spec.wait:
                await self.first_client.wait()
        elif spec.path is not None:
            await loop.create_unix_connection(lambda: _HMPConnection(self), spec.path)
        else:
            await loop.create_connection(lambda: _HMPConnection(self), spec.host, spec.port)

    def connected(self, conn: _HMPConnection) -> None:
        self.first_client.set()
        if self.active is None:
            self.active = conn
            conn.activate()
        else:
            self.pending.append(conn)

    def disconnected(self, conn: _HMPConnection) -> None:
        if conn in self.pending:
            self.pending.remove(conn)
            return
        if conn is not self.active:
            return
        self.active = None
        self.monitor.closed()
        while self.pending and self.active is None:
            nxt = self.pending.pop(0)
            if nxt.transport is not None and not nxt.transport.is_closing():
                self.active = nxt
                nxt.activate()

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for conn in [self.active, *self.pending]:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            if self.spec.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spec.path)


# --- stdio ------------------------------------------------------------------------------------


def raw_terminal(attrs: list[object]) -> list[object]:
    """qemu_chr_set_echo_stdio(false): raw input, output post-processing kept, signals kept."""
    iflag, oflag, cflag, lflag = (int(attrs[i]) for i in range(4))  # type: ignore[call-overload]
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag |= termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    cc = list(attrs[6])  # type: ignore[call-overload]
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, attrs[4], attrs[5], cc]


class HMPStdioService:
    """An HMP monitor on the process's stdin/stdout (``-monitor stdio``)."""

    def __init__(
        self, machine: Machine, in_fd: int = 0, out_fd: int = 1, mux_frontends: int = 0
    ) -> None:
        self.machine = machine
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.monitor = HMPMonitor(machine, self._schedule)
        self.mux = (
            Mux(self.monitor, self._write, lambda: machine.request_exit(0), mux_frontends)
            if mux_frontends
            else None
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._saved_tty: list[object] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    def _schedule(self, delay_s: float, fn: Callable[[], None]) -> object:
        assert self.loop is not None
        handle = self.loop.call_later(delay_s, lambda: (self._timers.discard(handle), fn()))
        self._timers.add(handle)
        return handle

    def _write(self, data: bytes) -> None:
        try:
            while data:
                n = os.write(self.out_fd, data)
                data = data[n:]
        except OSError:
            pass  # nobody reads stdout any more; QEMU drops the output too

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if os.isatty(self.in_fd):
            self._saved_tty = termios.tcgetattr(self.in_fd)
            termios.tcsetattr(self.in_fd, termios.TCSANOW, raw_terminal(self._saved_tty))
        if self.mux is not None:
            self.mux.open()
        else:
            self.monitor.opened(self._write)
        # A blocking reader thread works for every kind of stdin (tty, pipe, file, null).
        threading.Thread(target=self._reader, name="hmp-stdio", daemon=True).start()

    def _reader(self) -> None:
        loop = self.loop
        assert loop is not None
        while not self._closed:
            try:
                data = os.read(self.in_fd, 4096)
            except OSError:
                data = b""
            try:
                loop.call_soon_threadsafe(self._received, data)
            except RuntimeError:
                return  # the loop is gone
            if not data:
                return

    def _received(self, data: bytes) -> None:
        if self._closed:
            return
        if data and self.mux is not None:
            self.mux.feed(data)
        elif data:
            self.monitor.feed(data)
        # EOF: QEMU stops reading stdin and keeps running; stdout still works.

    async def close(self) -> None:
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._saved_tty is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.in_fd, termios.TCSANOW, self._saved_tty)


# --- the service provider ---------------------------------------------------------------------


def services_for(config: VMConfig, machine: Machine) -> list[Service]:
    """One service per readline monitor of the command line (``-monitor``, ``-mon``)."""
    chardevs = {c.id: c for c in config.chardevs}
    services: list[Service] = []
    for mon in config.monitors:
        if mon.mode != "readline":
            continue
        chardev = chardevs[mon.chardev]
        if chardev.backend == "stdio":
            mux = dict(chardev.options).get("mux", "off") in ("on", "yes", "true", "y")
            # A serial port on the same mux is the other frontend (machines with one).
            serial = config.machine.type != "none" and any(
                s.chardev == chardev.id for s in config.serials
            )
            services.append(HMPStdioService(machine, mux_frontends=1 + serial if mux else 0))
        elif chardev.backend == "socket":
            port = int(chardev.port) if chardev.port is not None else None
            spec = SocketSpec(
                path=chardev.path,
                host=chardev.host,
                port=port,
                server=chardev.server,
                wait=chardev.server and chardev.wait,
            )
            options = dict(chardev.options)
            telnet = options.get("telnet", "off") in ("on", "yes", "true", "y")
            services.append(HMPSocketService(machine, spec, telnet))
        elif chardev.backend != "null":
            raise StartupError(
                f"-chardev {chardev.backend},id={chardev.id}: an HMP monitor on a "
                f"'{chardev.backend}' chardev is not supported; use stdio or a socket"
            )
    return services
