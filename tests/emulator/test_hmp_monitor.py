"""The HMP monitor core and the telnet filter, sans-IO: a stub dispatcher, a manual clock.

What QEMU 7.2 does, as observed on its sockets: the banner and prompt on open, input held
while a command runs or a synchronous ``migrate`` waits (polled at once, then every second),
no prompt after ``quit``, history kept across clients.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from typing import Any

from migemu.emulator.hmp.mux import MUX_HELP, Mux
from migemu.emulator.hmp.server import BANNER, HMPMonitor, HMPSocketService
from migemu.emulator.hmp.telnet import TELNET_INIT, TelnetFilter
from migemu.emulator.qmp.server import SocketSpec

K = b"\x1b[K"


class StubDispatcher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.statuses = ["setup", "active", "completed"]

    def has(self, name: str) -> bool:
        return True

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        self.calls.append((name, arguments))
        if name == "query-migrate":
            return {"status": self.statuses.pop(0)}
        if name == "query-status":
            return {"running": True, "singlestep": False, "status": "running"}
        return {}


class StubMachine:
    prog_name = "migemu"

    def __init__(self) -> None:
        self.dispatcher = StubDispatcher()


class Clock:
    """A manual scheduler: ``advance`` runs what is due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, Callable[[], None]]] = []

    def schedule(self, delay_s: float, fn: Callable[[], None]) -> object:
        self.due.append((self.now + delay_s, fn))
        return fn

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while ready := [d for d in self.due if d[0] <= self.now]:
            self.due.remove(ready[0])
            ready[0][1]()


def monitor() -> tuple[HMPMonitor, Clock, list[bytes], list[str]]:
    clock, out, reports = Clock(), [], []
    mon = HMPMonitor(StubMachine(), clock.schedule, reports.append)  # type: ignore[arg-type]
    mon.opened(out.append)
    return mon, clock, out, reports


def text(out: list[bytes]) -> bytes:
    data = b"".join(out)
    out.clear()
    return data


def test_open_prints_banner_and_prompt():
    _, _, out, _ = monitor()
    assert text(out) == BANNER.replace("\n", "\r\n").encode() + b"(qemu) "


def test_synchronous_migrate_suspends_until_the_status_settles():
    mon, clock, out, _ = monitor()
    text(out)
    mon.feed(b"migrate tcp:h:1\rs\r")
    assert text(out).endswith(b"migrate tcp:h:1" + K + b"\r\n")  # no prompt, no "s" echo
    clock.advance(0)  # first poll: setup
    clock.advance(0.999)
    assert text(out) == b""
    clock.advance(0.001)  # active
    clock.advance(1.0)  # completed: prompt, then the held "s" runs
    assert text(out) == b"(qemu) s" + K + b"\r\n(qemu) "
    calls = [c for c, _ in mon.machine.dispatcher.calls]  # type: ignore[attr-defined]
    assert calls == ["migrate", "query-migrate", "query-migrate", "query-migrate", "stop"]


def test_failed_migration_is_reported_outside_the_monitor():
    mon, clock, out, reports = monitor()
    mon.console.qmp = lambda name, args=None: (  # type: ignore[method-assign]
        {"status": "failed", "error-desc": "boom"} if name == "query-migrate" else {}
    )
    text(out)
    mon.feed(b"migrate x:y\r")
    clock.advance(0)
    assert text(out).endswith(b"\r\n(qemu) ")
    assert reports == ["migemu: boom"]


def test_quit_leaves_the_monitor_silent():
    mon, _, out, _ = monitor()
    text(out)
    mon.feed(b"quit\rinfo status\r")
    assert text(out).endswith(b"quit" + K + b"\r\n")


def test_history_survives_a_new_client():
    mon, _, out, _ = monitor()
    mon.feed(b"stop\r")
    mon.closed()
    mon.opened(out.append)
    text(out)
    mon.feed(b"\x1b[A")
    assert text(out) == b"stop" + K


def test_input_of_a_gone_client_is_dropped():
    mon, _, out, _ = monitor()
    mon.closed()
    mon.feed(b"stop\r")
    assert mon.machine.dispatcher.calls == []  # type: ignore[attr-defined]


def test_telnet_filter():
    f = TelnetFilter()
    assert f.feed(b"\xff\xfd\x01a\xff\xffb") == b"a\xffb"
    assert f.feed(b"\xff\xf3c") == b"c"  # a break
    assert f.feed(b"\xff\xfa\x18\x01\xff\xf0y") == b"\x01"  # SB payload leaks, SE eats "y"
    assert f.feed(b"\xff") == b"" and f.feed(b"\xfb") == b"" and f.feed(b"\x03d") == b"d"
    assert TELNET_INIT == b"\xff\xfb\x01\xff\xfb\x03\xff\xfb\x00\xff\xfd\x00"


def test_mux_with_a_serial_port_greets_the_monitor_on_first_focus():
    clock, out, exits = Clock(), [], []
    mon = HMPMonitor(StubMachine(), clock.schedule)  # type: ignore[arg-type]
    mux = Mux(mon, out.append, lambda: exits.append(0), frontends=2)
    mux.open()
    mux.feed(b"stop\r")  # the serial port has the focus: dropped
    assert text(out) == b"" and mon.machine.dispatcher.calls == []  # type: ignore[attr-defined]
    mux.feed(b"\x01c")
    assert text(out) == BANNER.replace("\n", "\r\n").encode() + b"(qemu) "
    mux.feed(b"\x01c")
    assert text(out) == b"\r\n"
    mux.feed(b"\x01c\x01x")
    assert text(out) == b"(qemu) QEMU: Terminated\n\r" and exits == [0]


def test_mux_holds_escapes_while_the_monitor_is_suspended():
    clock, out = Clock(), []
    mon = HMPMonitor(StubMachine(), clock.schedule)  # type: ignore[arg-type]
    mux = Mux(mon, out.append, lambda: None)
    mux.open()
    text(out)
    mux.feed(b"migrate a:b\r\x01h")
    clock.advance(0)
    clock.advance(1)
    assert b"C-a h" not in text(out)
    clock.advance(1)
    assert text(out) == b"(qemu) " + MUX_HELP.encode()


def test_hmp_unix_socket_is_owner_only(tmp_path):
    async def main() -> int:
        service = HMPSocketService(StubMachine(), SocketSpec(path=str(tmp_path / "h.sock")))  # type: ignore[arg-type]
        await service.start()
        try:
            return stat.S_IMODE(os.stat(tmp_path / "h.sock").st_mode)
        finally:
            await service.close()

    assert asyncio.run(main()) == 0o600
    assert not (tmp_path / "h.sock").exists()
