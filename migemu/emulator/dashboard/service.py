"""The dashboard as a service of the ``migemu`` process, or of ``migemu dashboard`` (emulator).

``DashboardServer`` starts one ``Hub`` per data source and an aiohttp site on the address of
the ``-dashboard`` option. Once it listens it writes its URL to ``url-file`` (mode 0600) if
asked, and prints one line on stderr only when the user needs it: a picked port (0) without
``url-file``, or ``writable=on`` (the URL then carries the write token, which exists nowhere
else).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from aiohttp import web

from migemu.emulator.dashboard.app import create_multi_app, new_token
from migemu.emulator.dashboard.hub import Hub
from migemu.emulator.dashboard.options import DashboardOptions
from migemu.emulator.dashboard.source import DataSource

SHUTDOWN_TIMEOUT_S = 2.0  # for requests still running when the process ends


def format_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


class DashboardServer:
    """The HTTP dashboard of one or more instances."""

    def __init__(
        self,
        sources: Sequence[DataSource],
        options: DashboardOptions,
        *,
        prog_name: str = "migemu",
        stderr: TextIO | None = None,
        announce: bool = False,
    ) -> None:
        self.sources = list(sources)
        self.options = options
        self.prog_name = prog_name
        self.stderr = stderr
        self.announce = announce  # print the URL even when the user did not need it
        self.token = new_token() if options.writable else ""
        self.hubs: list[Hub] = []
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self._wrote_url_file = False

    @property
    def port(self) -> int | None:
        if self._runner is None or not self._runner.addresses:
            return None
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        for source in self.sources:
            hub = Hub(source)
            self.hubs.append(hub)
            await hub.start()
        loopback = self.options.loopback
        app = create_multi_app(self.hubs, token=self.token, loopback=loopback)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await self._runner.setup()
        host = self.options.host.strip("[]")
        site = web.TCPSite(self._runner, host, self.options.port, reuse_address=True)
        await site.start()
        port = self.port
        assert port is not None
        self.url = format_url(host, port)
        self._announce(self.url)

    def _announce(self, url: str) -> None:
        opts = self.options
        if opts.url_file is not None:
            tmp = f"{opts.url_file}.tmp{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(url + "\n")
            os.replace(tmp, opts.url_file)
            self._wrote_url_file = True
        stderr = self.stderr if self.stderr is not None else sys.stderr
        if self.token:
            print(
                f"{self.prog_name}: dashboard (writable) at {url}#token={self.token}",
                file=stderr,
                flush=True,
            )
        elif self.announce or (opts.port == 0 and opts.url_file is None):
            print(f"{self.prog_name}: dashboard at {url}", file=stderr, flush=True)

    async def close(self) -> None:
        # Hubs first: that ends every page's WebSocket, which the runner would wait for.
        for hub in reversed(self.hubs):
            await hub.close()
        self.hubs.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._wrote_url_file and self.options.url_file is not None:
            try:
                os.unlink(self.options.url_file)
            except FileNotFoundError:
                pass
            self._wrote_url_file = False
