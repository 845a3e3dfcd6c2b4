"""The process around one machine: event loop, monitors, signals, exit (emulator layer).

``serve`` runs a ``Machine`` until it shuts down: it starts every monitor endpoint, turns
SIGTERM/SIGINT/SIGHUP into QEMU's ``SHUTDOWN`` (reason ``host-signal``) and a clean exit with
status 0, and lets the reply to ``quit`` go out before the sockets close. It returns the exit
status the process should have.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from migemu.emulator.machine import Machine, version_info
from migemu.emulator.qmp.server import MonitorEndpoint, SocketSpec
from migemu.emulator.qmp.session import QMPSession
from migemu.emulator.startup import StartupError
from migemu.qapi.errors import QMPError

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Service(Protocol):
    """Something served beside the QMP monitors (HMP consoles, qtest, the dashboard)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def serve(
    machine: Machine,
    qmp_specs: Sequence[SocketSpec],
    ready: Callable[[], None] | None = None,
    services: Sequence[Service] = (),
) -> int:
    """Serve until shutdown; ``ready`` runs once every listener exists."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_shutdown(reason: str) -> None:
        loop.call_soon_threadsafe(done.set)

    machine.on_shutdown = on_shutdown
    for sig in SIGNALS:
        loop.add_signal_handler(sig, machine.request_shutdown, "host-signal")

    def new_session() -> QMPSession:
        return QMPSession(machine.dispatcher, version_info())

    endpoints = [MonitorEndpoint(spec, new_session, machine.events, loop) for spec in qmp_specs]
    machine.monitor_endpoints = endpoints  # query-chardev reads their connection state
    try:
        try:
            for endpoint in endpoints:
                await endpoint.start()
            for service in services:
                await service.start()
            machine.start_incoming()
        except (QMPError, StartupError) as err:
            desc = err.desc if isinstance(err, QMPError) else str(err)
            print(f"{machine.prog_name}: {desc}", file=sys.stderr)
            return 1
        if ready is not None:
            ready()
        await done.wait()
        # Let replies written by the handler that asked for shutdown reach the socket buffer.
        await asyncio.sleep(0)
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        # The process is ending with its status (QEMU's exit() is immediate): a SIGTERM
        # during the teardown must not turn "exit 1" into "killed by a signal".
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for service in reversed(services):
            await service.close()
        for endpoint in endpoints:
            await endpoint.close()
        machine.close()
    return machine.exit_status
