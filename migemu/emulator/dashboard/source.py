"""Where the dashboard's data comes from: ``query(command)`` and ``subscribe(events)`` (emulator).

The dashboard never looks inside a machine; it is a client of QMP commands and events. A
``DataSource`` is the small interface it needs: run a query, and be told about events on the
event loop's thread. ``MachineSource`` serves an in-process ``Machine`` (``-dashboard``);
``migemu.tools.dashboard`` has the same interface over a QMP socket (``migemu dashboard``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from migemu.emulator.events import Event

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine

EventCallback = Callable[[Event], None]


class QueryError(Exception):
    """A command's error reply (``class`` and ``desc``), or a source that went away."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


class DataSource(Protocol):
    """What the dashboard reads: one QEMU-like instance."""

    @property
    def label(self) -> str:
        """A short name for the page title (the VM name or the socket)."""
        ...

    async def query(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """The command's return value; raises ``QueryError``."""
        ...

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` on the loop thread for every event; returns unsubscribe."""
        ...


class MachineSource:
    """An in-process ``Machine`` through its dispatcher and event bus."""

    def __init__(self, machine: Machine, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.machine = machine
        self._loop = loop

    @property
    def label(self) -> str:
        return self.machine.options.name or self.machine.prog_name

    async def query(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        from migemu.qapi.errors import QMPError  # loaded with the machine; not for attach mode

        try:
            return self.machine.dispatcher.execute(command, arguments)
        except QMPError as err:
            raise QueryError(err.desc, err.error_class) from err

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        loop = self._loop or asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        # Migration threads emit events too: those hop onto the loop (as the QMP server does).
        def on_event(event: Event) -> None:
            if threading.get_ident() == loop_thread:
                callback(event)
            else:
                loop.call_soon_threadsafe(callback, event)

        bus = self.machine.events
        bus.subscribe(on_event)
        return lambda: bus.unsubscribe(on_event)
