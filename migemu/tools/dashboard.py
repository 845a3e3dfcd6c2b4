"""``migemu dashboard``: the live dashboard for running instances, over their QMP sockets (tools).

    migemu dashboard [--listen HOST:PORT] [--writable] [--url-file PATH] QMP_SOCKET...

QMP_SOCKET is a unix socket path (or ``unix:PATH``) or ``tcp:HOST:PORT`` of a migemu or a real
QEMU. The page, API and metrics are the ``-dashboard`` ones (``migemu.emulator.dashboard``);
only the data source differs: ``QMPSource`` runs queries and receives events with qemu.qmp.
A QEMU monitor serves one client at a time, so give the instance a spare ``-qmp`` for this.
With several sockets, instance N is served under ``/N/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from migemu.emulator.dashboard.options import DashboardOptionError, parse_dashboard_option
from migemu.emulator.dashboard.service import DashboardServer
from migemu.emulator.dashboard.source import EventCallback, QueryError
from migemu.emulator.events import Event

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


def parse_address(text: str) -> str | tuple[str, int]:
    """``unix:PATH``, ``tcp:HOST:PORT`` or a bare path -> a qemu.qmp address."""
    if text.startswith("tcp:"):
        host, colon, port = text[4:].rpartition(":")
        if not colon or not port.isdigit():
            raise ValueError(f"bad TCP address '{text}'")
        return (host.strip("[]") or "127.0.0.1", int(port))
    return text.removeprefix("unix:")


class QMPSource:
    """A running QEMU (or migemu) through one of its QMP monitors."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        self.address = address
        self.client = QMPClient(self.label)
        self._callbacks: list[EventCallback] = []
        self._pump: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        if isinstance(self.address, tuple):
            return f"tcp:{self.address[0]}:{self.address[1]}"
        return self.address

    async def connect(self) -> None:
        await asyncio.wait_for(self.client.connect(self.address), CONNECT_TIMEOUT_S)
        self._pump = asyncio.create_task(self._deliver_events(), name=f"events {self.label}")

    async def query(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await self.client.execute(command, arguments)
        except ExecuteError as err:
            raise QueryError(str(err), err.error_class) from err
        except (QMPError, OSError) as err:  # disconnected, or never connected
            raise QueryError(f"{self.label}: {err}") from err

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def _deliver_events(self) -> None:
        async for message in self.client.events:
            event: Event = dict(message)
            for callback in list(self._callbacks):
                callback(event)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        with contextlib.suppress(Exception):
            await self.client.disconnect()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migemu dashboard",
        description="Serve the live migration dashboard for running QEMU/migemu instances.",
    )
    parser.add_argument("sockets", nargs="+", metavar="QMP_SOCKET")
    parser.add_argument(
        "--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (default 127.0.0.1:0)"
    )
    parser.add_argument(
        "--writable", action="store_true", help="allow migrate/cancel (token printed on stderr)"
    )
    parser.add_argument("--url-file", help="write the dashboard's URL to this file")
    return parser


async def serve(args: argparse.Namespace) -> int:
    text = args.listen
    if args.writable:
        text += ",writable=on"
    if args.url_file:
        text += f",url-file={args.url_file}"
    options = parse_dashboard_option(text)
    sources = [QMPSource(parse_address(s)) for s in args.sockets]
    server: DashboardServer | None = None
    try:
        for source in sources:
            try:
                await source.connect()
            except (QMPError, OSError, TimeoutError) as err:
                print(f"migemu dashboard: {source.label}: {err}", file=sys.stderr)
                return 1
        server = DashboardServer(sources, options, prog_name="migemu dashboard", announce=True)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        if server is not None:
            await server.close()
        for source in sources:
            await source.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return asyncio.run(serve(args))
    except (DashboardOptionError, ValueError) as err:
        print(f"migemu dashboard: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"migemu dashboard: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
