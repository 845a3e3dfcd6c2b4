"""The emulated VM's run state: stop, cont, shutdown and their events (emulator layer).

This is QEMU's runstate logic as a client sees it: ``stop`` of a running guest moves it to
``paused`` and emits STOP; ``cont`` emits RESUME and runs it; both are no-ops without an event
when there is nothing to do; on an incoming VM they only change whether the guest will start
once the migration completes (QEMU's ``autostart``). Events go out synchronously, so they
reach clients before the reply of the command that caused them, as with QEMU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from migemu.emulator.events import EventBus
from migemu.emulator.runstate import NEEDS_RESET, RunState
from migemu.qapi.errors import QMPError

StateListener = Callable[[RunState, RunState], None]


class VM:
    """Run state of one emulated guest."""

    def __init__(self, events: EventBus, *, start_paused: bool, incoming: bool) -> None:
        self.events = events
        self._lock = threading.RLock()
        self.autostart = not start_paused
        if incoming:
            self._state = RunState.INMIGRATE
        elif start_paused:
            self._state = RunState.PRELAUNCH
        else:
            self._state = RunState.RUNNING
        self._listeners: list[StateListener] = []

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is RunState.RUNNING

    def add_listener(self, listener: StateListener) -> None:
        """``listener(old, new)`` runs after every state change (e.g. to pause the workload)."""
        self._listeners.append(listener)

    def set_state(self, new: RunState) -> None:
        """The one place the run state changes."""
        with self._lock:
            old, self._state = self._state, new
        if old is not new:
            for listener in self._listeners:
                listener(old, new)

    def stop(self, state: RunState = RunState.PAUSED) -> None:
        """``vm_stop``: only a running guest stops (and emits STOP)."""
        with self._lock:
            if self._state is RunState.INMIGRATE:
                self.autostart = False
                return
            if not self.running:
                return
            self.set_state(state)
            self.events.emit("STOP")

    def cont(self) -> None:
        """``qmp_cont``: refuse states that need a reset, start anything else."""
        with self._lock:
            if self._state in NEEDS_RESET:
                raise QMPError("Resetting the Virtual Machine is required")
            if self._state is RunState.INMIGRATE:
                self.autostart = True
                return
            self.start()

    def start(self) -> None:
        """``vm_start``: RESUME, then running; nothing if already running."""
        with self._lock:
            if self.running:
                return
            self.events.emit("RESUME")
            self.set_state(RunState.RUNNING)

    def status_info(self) -> dict[str, object]:
        """query-status, members in schema order (running, singlestep, status)."""
        return {"running": self.running, "singlestep": False, "status": self._state.value}
