"""The dashboard's live side: events in, queries out, updates pushed to pages (emulator layer).

A ``Hub`` owns one ``DashboardModel`` and feeds it from a ``DataSource``. Events are logged and
pushed at once; they also say what to re-query (MIGRATION -> query-migrate and the settings,
STOP/RESUME -> query-status). One worker task runs those queries, in order. While a migration
is active it polls query-migrate every ``poll_interval_s`` for the chart; when idle it waits
for the next event and polls nothing -- unless the ``events`` capability is off (QEMU then
sends no MIGRATION events), where it checks query-migrate every ``idle_poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from migemu.emulator.dashboard.model import MIGRATION_EVENTS, RUNSTATE_EVENTS, DashboardModel
from migemu.emulator.dashboard.source import DataSource, QueryError
from migemu.emulator.events import Event

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
IDLE_POLL_S = 2.0
CLIENT_QUEUE_LEN = 1000  # messages a slow page may fall behind before it is dropped

Message = dict[str, Any]


class Subscriber:
    """One page's queue of messages (its WebSocket handler drains it)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(CLIENT_QUEUE_LEN)

    def push(self, message: Message | None) -> bool:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True


class Hub:
    """Keeps one model current and fans its changes out to subscribers."""

    def __init__(
        self,
        source: DataSource,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval_s: float = POLL_INTERVAL_S,
        idle_poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.source = source
        self.model = DashboardModel()
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.idle_poll_s = idle_poll_s
        self.subscribers: set[Subscriber] = set()
        self.queries = 0  # query-migrate calls made so far
        # The worker's current wait: None while it works, else its timeout (inf: events only).
        self.waiting: float | None = None
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._unsubscribe = self.source.subscribe(self.on_event)
        self.model.identity = await self._identity()
        await self.refresh_settings()
        await self.refresh_status()
        await self.refresh_migration()
        self._worker = asyncio.create_task(self._work(), name="dashboard-hub")

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for sub in list(self.subscribers):
            sub.push(None)
        self.subscribers.clear()

    # -- subscribers -----------------------------------------------------------------------

    def add_subscriber(self) -> Subscriber:
        sub = Subscriber()
        sub.push({"type": "snapshot", **self.model.snapshot()})
        self.subscribers.add(sub)
        # Settings change without events (migrate-set-*): a new page gets them re-read.
        self.request_refresh()
        return sub

    def remove_subscriber(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def broadcast(self, message: Message) -> None:
        for sub in list(self.subscribers):
            if not sub.push(message):
                log.warning("dashboard: dropping a page that does not keep up")
                self.subscribers.discard(sub)
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.get_nowait()
                    sub.queue.put_nowait(None)

    # -- events (on the loop thread) -------------------------------------------------------

    def on_event(self, event: Event) -> None:
        self.model.record_event(event)
        self.broadcast({"type": "event", "event": event})
        name = event.get("event")
        if name in MIGRATION_EVENTS:
            self._pending.add("migration")
            self._pending.add("status")
            data = event.get("data") or {}
            if data.get("status") == "setup":
                self._pending.add("settings")
        elif name in RUNSTATE_EVENTS:
            self._pending.add("status")
            self._pending.add("migration")
        self._wake.set()

    def request_refresh(self) -> None:
        """Re-read everything soon (after a write through the dashboard)."""
        self._pending.update(("settings", "status", "migration"))
        self._wake.set()

    # -- queries ---------------------------------------------------------------------------

    async def _query(self, command: str) -> Any:
        try:
            return await self.source.query(command)
        except QueryError as err:
            log.debug("dashboard: %s failed: %s", command, err.desc)
            return None

    async def _identity(self) -> dict[str, Any]:
        name = await self._query("query-name")
        version = await self._query("query-version")
        return {
            "label": self.source.label,
            "name": (name or {}).get("name"),
            "version": version,
        }

    async def refresh_status(self) -> dict[str, Any]:
        status = await self._query("query-status")
        if status is not None and status != self.model.status:
            self.model.status = status
            self.broadcast({"type": "status", "status": status})
        return self.model.status

    async def refresh_migration(self) -> dict[str, Any]:
        info = await self._query("query-migrate")
        self.queries += 1
        if info is None:
            return self.model.migration
        changed = info != self.model.migration
        sample = self.model.record_migration(info, self.clock())
        if changed or sample is not None:
            self.broadcast(
                {
                    "type": "migration",
                    "migration": info,
                    "sample": sample,
                    "series": self.model.migrations_seen,
                }
            )
        return info

    async def refresh_settings(self) -> None:
        params = await self._query("query-migrate-parameters")
        caps = await self._query("query-migrate-capabilities")
        changed = False
        if params is not None and params != self.model.parameters:
            self.model.parameters = params
            changed = True
        if caps is not None and caps != self.model.capabilities:
            self.model.capabilities = caps
            changed = True
        if changed:
            self.broadcast(
                {
                    "type": "settings",
                    "parameters": self.model.parameters,
                    "capabilities": self.model.capabilities,
                }
            )

    async def _work(self) -> None:
        while True:
            pending, self._pending = self._pending, set()
            try:
                if "settings" in pending:
                    await self.refresh_settings()
                if pending or self.model.active:
                    await self.refresh_status()
                    await self.refresh_migration()
            except Exception:  # a bug: keep the dashboard alive, say so
                log.exception("dashboard: refresh failed")
            if self._pending:
                continue
            self._wake.clear()
            idle_check = not self.model.active and not self.model.events_enabled
            if self.model.active:
                timeout: float | None = self.poll_interval_s
            else:
                timeout = self.idle_poll_s if idle_check else None
            self.waiting = math.inf if timeout is None else timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self.waiting = None
            if idle_check:
                self._pending.add("migration")
