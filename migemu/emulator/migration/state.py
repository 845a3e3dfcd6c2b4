"""The migration status state machine of QEMU 7.2, sans-IO (emulator layer).

QEMU keeps two independent status variables: the outgoing one (``MigrationState.state``,
the *source* side) and the incoming one (``MigrationIncomingState.state``, the
*destination* side). Each is one ``MigrationStateMachine`` here, driven by named
``MigrationEvent``s through a literal transition table. The one method that assigns the
state also emits ``MIGRATION {"status": ...}`` through an injected emitter, with QEMU's
quirks. No threads are started and no IO is done; a lock makes it safe to call from the
migration thread, the channel threads and the monitor at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

# ---------------------------------------------------------------------------------------
# Theory of operation (facts §4.2, §4.3, §4.6, §7.2)
#
# Source (precopy, 7.2). ``migrate`` resets the state to ``none`` *without* an event
# (migrate_init assigns it directly), then moves none -> setup *with* one. The migration
# thread moves setup -> active (or setup -> wait-unplug -> active with failover devices).
# Switchover is active -> completed; with ``pause-before-switchover`` it is
# active -> pre-switchover, then after ``migrate-continue`` pre-switchover -> device, and
# device -> completed once the device state is sent. An error in setup / wait-unplug /
# active / pre-switchover / device moves to failed. ``migrate_cancel`` moves any running
# state to cancelling (including cancelling itself: QEMU's retry loop swaps
# cancelling -> cancelling and so emits a second ``cancelling``), and the cleanup moves
# cancelling -> cancelled. failed -> failed is QEMU's ``migrate_set_state`` quirk: it emits
# on every successful compare-and-swap, so when a channel thread has already failed the
# migration, the migration thread's own swap from the state it read (``failed``) emits a
# second ``failed`` event (REC). Use ``compare_and_set`` to reproduce it.
#
# Destination (7.2). ``migrate-incoming`` (or ``-incoming``) emits ``setup``
# unconditionally, even with ``events`` off, while the state *stays* ``none``. When the
# main channel and every multifd channel are connected, none -> active. After the VM has
# resumed (``RESUME`` precedes the event), active -> completed; a load error is
# active -> failed (and QEMU 7.2 then exits with status 1, which is the caller's job).
#
# Postcopy (7.2, migration.c/savevm.c). Source: once ``migrate-start-postcopy`` was asked
# for, the migration thread's next iteration runs postcopy_start(): active ->
# postcopy-active (before the VM stops and the device state goes out), then
# postcopy-active -> completed when the last page is sent and the return path said SHUT. A
# network failure (or ``migrate-pause``) is postcopy-active -> postcopy-paused (nothing is
# lost: the source keeps its RAM); ``migrate resume:true`` moves postcopy-paused ->
# postcopy-recover, and the RESUME_ACK of the destination postcopy-recover ->
# postcopy-active; a failure while recovering pauses again. Destination: POSTCOPY_LISTEN
# (in the device-state package) moves active -> postcopy-active, EOF of the postcopy
# stream postcopy-active -> completed; a failed stream pauses (postcopy-paused) once the
# guest runs; ``migrate-recover`` is postcopy-paused -> postcopy-recover and the
# POSTCOPY_RESUME command of the source postcopy-recover -> postcopy-active.
# migrate_cancel in a postcopy state: see manager.py (7.2 swaps it to cancelling).
#
# COLO and the 10.x-only states are values of the enum but no transition leads to them.
#
# Every emitted event is ``MIGRATION {"status": <new state>}``, only when the ``events``
# capability is on at the moment of the swap, except for the two entries of
# EMISSION_EXCEPTIONS below.
# ---------------------------------------------------------------------------------------


class MigrationStatus(Enum):
    """QAPI ``MigrationStatus`` of QEMU 7.2, in enum order; values are the wire strings."""

    NONE = "none"
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"


class MigrationEvent(Enum):
    """What happened; the tables say what it does to the status."""

    RESET = "reset"  # source: migrate_init's silent assignment back to none
    START = "start"  # source: none -> setup at the end of migrate_init
    SETUP_DONE = "setup-done"  # source: the migration thread finished setup
    WAIT_UNPLUG = "wait-unplug"  # source: failover devices must unplug first
    UNPLUG_DONE = "unplug-done"  # source: they did
    PAUSE_BEFORE_SWITCHOVER = "pause-before-switchover"  # source: VM stopped, waiting
    CONTINUE = "continue"  # source: migrate-continue woke the thread
    DEVICE_DONE = "device-done"  # source: device state sent after the pause
    COMPLETE = "complete"  # both: migration finished successfully
    ERROR = "error"  # both: something failed
    CANCEL = "cancel"  # source: migrate_cancel
    CANCEL_DONE = "cancel-done"  # source: cleanup after cancel
    INCOMING_START = "incoming-start"  # destination: migrate-incoming / -incoming
    CHANNELS_CONNECTED = "channels-connected"  # destination: every channel is up
    POSTCOPY_START = "postcopy-start"  # source: postcopy_start(); destination: LISTEN
    POSTCOPY_PAUSE = "postcopy-pause"  # both: the stream broke in postcopy, or migrate-pause
    POSTCOPY_RECOVER = "postcopy-recover"  # source: migrate resume; dest: migrate-recover
    POSTCOPY_RESUMED = "postcopy-resumed"  # both: the recovery handshake is done


class Side(Enum):
    SOURCE = "source"
    DESTINATION = "destination"


S = MigrationStatus
E = MigrationEvent

SOURCE_TRANSITIONS: dict[tuple[MigrationStatus, MigrationEvent], MigrationStatus] = {
    # a new migration
    (S.COMPLETED, E.RESET): S.NONE,
    (S.FAILED, E.RESET): S.NONE,
    (S.CANCELLED, E.RESET): S.NONE,
    (S.NONE, E.START): S.SETUP,
    # setup
    (S.SETUP, E.SETUP_DONE): S.ACTIVE,
    (S.SETUP, E.WAIT_UNPLUG): S.WAIT_UNPLUG,
    (S.WAIT_UNPLUG, E.UNPLUG_DONE): S.ACTIVE,
    # switchover
    (S.ACTIVE, E.COMPLETE): S.COMPLETED,
    (S.ACTIVE, E.PAUSE_BEFORE_SWITCHOVER): S.PRE_SWITCHOVER,
    (S.PRE_SWITCHOVER, E.CONTINUE): S.DEVICE,
    (S.DEVICE, E.DEVICE_DONE): S.COMPLETED,
    # errors
    (S.SETUP, E.ERROR): S.FAILED,
    (S.WAIT_UNPLUG, E.ERROR): S.FAILED,
    (S.ACTIVE, E.ERROR): S.FAILED,
    (S.PRE_SWITCHOVER, E.ERROR): S.FAILED,
    (S.DEVICE, E.ERROR): S.FAILED,
    (S.FAILED, E.ERROR): S.FAILED,  # migrate_set_state's no-op swap: a second event
    # cancel
    (S.SETUP, E.CANCEL): S.CANCELLING,
    (S.WAIT_UNPLUG, E.CANCEL): S.CANCELLING,
    (S.ACTIVE, E.CANCEL): S.CANCELLING,
    (S.PRE_SWITCHOVER, E.CANCEL): S.CANCELLING,
    (S.DEVICE, E.CANCEL): S.CANCELLING,
    (S.CANCELLING, E.CANCEL): S.CANCELLING,  # migrate_fd_cancel's loop swaps it again
    (S.CANCELLING, E.CANCEL_DONE): S.CANCELLED,
    # postcopy
    (S.ACTIVE, E.POSTCOPY_START): S.POSTCOPY_ACTIVE,
    (S.POSTCOPY_ACTIVE, E.COMPLETE): S.COMPLETED,
    (S.POSTCOPY_ACTIVE, E.ERROR): S.FAILED,
    (S.POSTCOPY_ACTIVE, E.POSTCOPY_PAUSE): S.POSTCOPY_PAUSED,
    (S.POSTCOPY_PAUSED, E.POSTCOPY_RECOVER): S.POSTCOPY_RECOVER,
    (S.POSTCOPY_RECOVER, E.POSTCOPY_RESUMED): S.POSTCOPY_ACTIVE,
    (S.POSTCOPY_RECOVER, E.POSTCOPY_PAUSE): S.POSTCOPY_PAUSED,
    (S.POSTCOPY_RECOVER, E.ERROR): S.FAILED,
    (S.POSTCOPY_ACTIVE, E.CANCEL): S.CANCELLING,
    (S.POSTCOPY_PAUSED, E.CANCEL): S.CANCELLING,
    (S.POSTCOPY_RECOVER, E.CANCEL): S.CANCELLING,
}

DESTINATION_TRANSITIONS: dict[tuple[MigrationStatus, MigrationEvent], MigrationStatus] = {
    (S.NONE, E.INCOMING_START): S.NONE,  # but emits "setup", see EMISSION_EXCEPTIONS
    (S.NONE, E.CHANNELS_CONNECTED): S.ACTIVE,
    (S.ACTIVE, E.COMPLETE): S.COMPLETED,
    (S.ACTIVE, E.ERROR): S.FAILED,
    # postcopy
    (S.ACTIVE, E.POSTCOPY_START): S.POSTCOPY_ACTIVE,
    (S.POSTCOPY_ACTIVE, E.COMPLETE): S.COMPLETED,
    (S.POSTCOPY_ACTIVE, E.ERROR): S.FAILED,
    (S.POSTCOPY_ACTIVE, E.POSTCOPY_PAUSE): S.POSTCOPY_PAUSED,
    (S.POSTCOPY_PAUSED, E.POSTCOPY_RECOVER): S.POSTCOPY_RECOVER,
    (S.POSTCOPY_RECOVER, E.POSTCOPY_RESUMED): S.POSTCOPY_ACTIVE,
    (S.POSTCOPY_RECOVER, E.POSTCOPY_PAUSE): S.POSTCOPY_PAUSED,
    # migrate-recover: qemu_start_incoming_migration emits "setup", the state stays
    (S.POSTCOPY_PAUSED, E.INCOMING_START): S.POSTCOPY_PAUSED,
}

# The exceptions to "emit the new status iff `events` is on":
# value None = never emit; a status = always emit that status, whatever `events` says.
EMISSION_EXCEPTIONS: dict[tuple[Side, MigrationEvent], MigrationStatus | None] = {
    (Side.SOURCE, E.RESET): None,
    (Side.DESTINATION, E.INCOMING_START): S.SETUP,
}

TRANSITIONS: dict[Side, dict[tuple[MigrationStatus, MigrationEvent], MigrationStatus]] = {
    Side.SOURCE: SOURCE_TRANSITIONS,
    Side.DESTINATION: DESTINATION_TRANSITIONS,
}

# migration_is_running() in 7.2: `migrate` and `migrate-set-capabilities` refuse with
# "There's a migration process in progress" in these states (facts §2.4).
RUNNING_STATES: frozenset[MigrationStatus] = frozenset(
    {
        S.SETUP,
        S.ACTIVE,
        S.POSTCOPY_ACTIVE,
        S.POSTCOPY_PAUSED,
        S.POSTCOPY_RECOVER,
        S.PRE_SWITCHOVER,
        S.DEVICE,
        S.WAIT_UNPLUG,
        S.CANCELLING,
    }
)

# multifd_send_terminate_threads(): a failing channel fails the migration only from these
# (facts §7.2); from anywhere else it just records the error.
CHANNEL_FAILABLE_STATES: frozenset[MigrationStatus] = frozenset(
    {S.SETUP, S.PRE_SWITCHOVER, S.DEVICE, S.ACTIVE}
)

del S, E

Emitter = Callable[[str, dict[str, Any]], object]


class MigrationStateError(Exception):
    """Root of the state machine's errors."""


class InvalidTransition(MigrationStateError):
    """``event`` is not allowed in ``state`` by the side's table; nothing changed."""

    def __init__(self, side: Side, state: MigrationStatus, event: MigrationEvent) -> None:
        super().__init__(
            f"{side.value} migration: event {event.name} not allowed in state {state.value!r}"
        )
        self.side = side
        self.state = state
        self.event = event


class MigrationStateMachine:
    """One side's migration status, its transitions, events and first-error latch."""

    def __init__(
        self,
        side: Side,
        emit: Emitter,
        events_enabled: Callable[[], bool] = lambda: False,
    ) -> None:
        """``emit(name, data)`` is e.g. ``EventBus.emit``; ``events_enabled()`` reads the
        ``events`` capability at the moment of each swap, as QEMU does."""
        self._side = side
        self._table: Mapping[tuple[MigrationStatus, MigrationEvent], MigrationStatus] = TRANSITIONS[
            side
        ]
        self._emit = emit
        self._events_enabled = events_enabled
        self._lock = threading.RLock()
        self._status = MigrationStatus.NONE
        self._error_desc: str | None = None

    @property
    def side(self) -> Side:
        return self._side

    @property
    def status(self) -> MigrationStatus:
        return self._status

    @property
    def error_desc(self) -> str | None:
        """The first error recorded since the last ``start()`` (QEMU's ``s->error``)."""
        return self._error_desc

    def is_running(self) -> bool:
        return self._status in RUNNING_STATES

    def allowed_events(self) -> frozenset[MigrationEvent]:
        with self._lock:
            return frozenset(e for (s, e) in self._table if s is self._status)

    # -- the one place that assigns the state ------------------------------------------

    def _apply(self, event: MigrationEvent) -> MigrationStatus:
        """Look ``event`` up, assign the new state and emit; the caller holds the lock."""
        old = self._status
        new = self._table.get((old, event))
        if new is None:
            raise InvalidTransition(self._side, old, event)
        self._status = new
        key = (self._side, event)
        if key in EMISSION_EXCEPTIONS:
            announced = EMISSION_EXCEPTIONS[key]
            if announced is not None:
                self._emit("MIGRATION", {"status": announced.value})
        elif self._events_enabled():
            self._emit("MIGRATION", {"status": new.value})
        return new

    # -- ways in --------------------------------------------------------------------------

    def handle(self, event: MigrationEvent) -> MigrationStatus:
        """Apply ``event``; returns the new status or raises ``InvalidTransition``."""
        with self._lock:
            return self._apply(event)

    def try_handle(self, event: MigrationEvent) -> MigrationStatus | None:
        """Apply ``event`` if the table allows it now; ``None`` (and no change) if not."""
        with self._lock:
            if (self._status, event) not in self._table:
                return None
            return self._apply(event)

    def compare_and_set(self, expected: MigrationStatus, event: MigrationEvent) -> bool:
        """QEMU's ``migrate_set_state(&state, expected, new)``: only if the state still is
        ``expected``, apply ``event`` (which must be allowed from there) and emit.

        With ``expected=FAILED, event=ERROR`` this is the no-op swap that emits a second
        ``failed`` event when a channel thread failed the migration first."""
        with self._lock:
            if self._status is not expected:
                return False
            self._apply(event)
            return True

    def start(self) -> MigrationStatus:
        """``migrate`` (source): silent reset to none, clear the error, none -> setup."""
        with self._lock:
            if self._status is not MigrationStatus.NONE:
                self._apply(MigrationEvent.RESET)
            self._error_desc = None
            return self._apply(MigrationEvent.START)

    def set_error(self, desc: str) -> bool:
        """``migrate_set_error``: keep ``desc`` unless an error is already recorded.
        Returns whether this one was kept."""
        with self._lock:
            if self._error_desc is not None:
                return False
            self._error_desc = desc
            return True

    def fail(self, desc: str | None) -> bool:
        """A channel thread failed (``multifd_send_terminate_threads``): record ``desc``
        (first error wins) and, from setup/active/pre-switchover/device only, move to
        failed. Returns whether the state changed."""
        with self._lock:
            if desc is not None:
                self.set_error(desc)
            if self._status not in CHANNEL_FAILABLE_STATES:
                return False
            self._apply(MigrationEvent.ERROR)
            return True
