"""The migration state machine: every (state, event) pair of both tables, event emission
rules and quirks, the first-error latch under threads."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from migemu.emulator.events import EventBus
from migemu.emulator.migration.state import (
    CHANNEL_FAILABLE_STATES,
    DESTINATION_TRANSITIONS,
    EMISSION_EXCEPTIONS,
    RUNNING_STATES,
    SOURCE_TRANSITIONS,
    InvalidTransition,
    MigrationEvent,
    MigrationStateMachine,
    MigrationStatus,
    Side,
)

S = MigrationStatus
E = MigrationEvent


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.events.append((name, data))

    def statuses(self) -> list[str]:
        assert all(name == "MIGRATION" for name, _ in self.events)
        return [data["status"] for _, data in self.events]


def machine_in(
    side: Side, state: MigrationStatus, events_on: bool = True
) -> tuple[MigrationStateMachine, Recorder]:
    rec = Recorder()
    sm = MigrationStateMachine(side, rec, lambda: events_on)
    sm._status = state  # white box: put it anywhere, then test one step
    return sm, rec


def test_status_values_are_qemu_72_enum_in_order():
    assert [s.value for s in MigrationStatus] == [
        "none",
        "setup",
        "cancelling",
        "cancelled",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "completed",
        "failed",
        "colo",
        "pre-switchover",
        "device",
        "wait-unplug",
    ]


def test_status_enum_matches_our_qapi_schema():
    import json
    from importlib import resources

    schema = json.loads(
        resources.files("migemu.qapi").joinpath("schema/migration.json").read_text()
    )
    (enum,) = [d for d in schema if d.get("enum") == "MigrationStatus"]
    assert enum["data"] == [s.value for s in MigrationStatus]


def test_running_states_are_72_migration_is_running():
    assert {s.value for s in RUNNING_STATES} == {
        "setup",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "pre-switchover",
        "device",
        "wait-unplug",
        "cancelling",
    }
    for state in MigrationStatus:
        sm, _ = machine_in(Side.SOURCE, state)
        assert sm.is_running() is (state in RUNNING_STATES)


ALL_PAIRS = list(itertools.product(Side, MigrationStatus, MigrationEvent))


@pytest.mark.parametrize("events_on", [True, False])
@pytest.mark.parametrize(("side", "state", "event"), ALL_PAIRS)
def test_every_state_event_pair(side, state, event, events_on):
    table = SOURCE_TRANSITIONS if side is Side.SOURCE else DESTINATION_TRANSITIONS
    sm, rec = machine_in(side, state, events_on)
    if (state, event) not in table:
        with pytest.raises(InvalidTransition) as info:
            sm.handle(event)
        assert info.value.state is state and info.value.event is event
        assert info.value.side is side
        assert sm.status is state and rec.events == []
        assert sm.try_handle(event) is None
        assert sm.status is state and rec.events == []
        assert event not in sm.allowed_events()
        return
    expected = table[(state, event)]
    assert event in sm.allowed_events()
    assert sm.handle(event) is expected
    assert sm.status is expected
    if (side, event) in EMISSION_EXCEPTIONS:
        announced = EMISSION_EXCEPTIONS[(side, event)]
        assert rec.statuses() == ([] if announced is None else [announced.value])
    elif events_on:
        assert rec.statuses() == [expected.value]
    else:
        assert rec.events == []
    # try_handle is the same step
    sm2, rec2 = machine_in(side, state, events_on)
    assert sm2.try_handle(event) is expected
    assert rec2.events == rec.events


def test_source_table_in_brief():
    t = SOURCE_TRANSITIONS
    assert t[(S.NONE, E.START)] is S.SETUP
    assert t[(S.SETUP, E.SETUP_DONE)] is S.ACTIVE
    assert t[(S.ACTIVE, E.COMPLETE)] is S.COMPLETED
    assert t[(S.ACTIVE, E.PAUSE_BEFORE_SWITCHOVER)] is S.PRE_SWITCHOVER
    assert t[(S.PRE_SWITCHOVER, E.CONTINUE)] is S.DEVICE
    assert t[(S.DEVICE, E.DEVICE_DONE)] is S.COMPLETED
    assert t[(S.CANCELLING, E.CANCEL_DONE)] is S.CANCELLED
    for state in RUNNING_STATES - {S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER}:
        assert t[(state, E.CANCEL)] is S.CANCELLING
    for state in CHANNEL_FAILABLE_STATES | {S.WAIT_UNPLUG, S.FAILED}:
        assert t[(state, E.ERROR)] is S.FAILED
    # never from a terminal or cancelling state
    for state in (S.NONE, S.COMPLETED, S.CANCELLED, S.CANCELLING):
        assert (state, E.ERROR) not in t
    # a running migration cannot be restarted
    for state in RUNNING_STATES:
        assert (state, E.START) not in t and (state, E.RESET) not in t


def test_no_transition_leads_to_colo():
    for table in (SOURCE_TRANSITIONS, DESTINATION_TRANSITIONS):
        assert S.COLO not in set(table.values())


def test_postcopy_transitions_of_both_sides():
    """The postcopy pairs of 7.2: the same cycle on both sides, cancel on the source only."""
    cycle = {
        (S.ACTIVE, E.POSTCOPY_START): S.POSTCOPY_ACTIVE,
        (S.POSTCOPY_ACTIVE, E.COMPLETE): S.COMPLETED,
        (S.POSTCOPY_ACTIVE, E.ERROR): S.FAILED,
        (S.POSTCOPY_ACTIVE, E.POSTCOPY_PAUSE): S.POSTCOPY_PAUSED,
        (S.POSTCOPY_PAUSED, E.POSTCOPY_RECOVER): S.POSTCOPY_RECOVER,
        (S.POSTCOPY_RECOVER, E.POSTCOPY_RESUMED): S.POSTCOPY_ACTIVE,
        (S.POSTCOPY_RECOVER, E.POSTCOPY_PAUSE): S.POSTCOPY_PAUSED,
    }
    postcopy = {S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER}
    for table in (SOURCE_TRANSITIONS, DESTINATION_TRANSITIONS):
        for pair, new in cycle.items():
            assert table[pair] is new
    source_only = {
        pair: new
        for pair, new in SOURCE_TRANSITIONS.items()
        if (pair[0] in postcopy or new in postcopy) and pair not in cycle
    }
    assert source_only == {
        (S.POSTCOPY_RECOVER, E.ERROR): S.FAILED,
        (S.POSTCOPY_ACTIVE, E.CANCEL): S.CANCELLING,
        (S.POSTCOPY_PAUSED, E.CANCEL): S.CANCELLING,
        (S.POSTCOPY_RECOVER, E.CANCEL): S.CANCELLING,
    }
    dest_extra = {
        pair
        for pair, new in DESTINATION_TRANSITIONS.items()
        if (pair[0] in postcopy or new in postcopy) and pair not in cycle
    }
    # migrate-recover emits "setup" (qemu_start_incoming_migration) and stays paused
    assert dest_extra == {(S.POSTCOPY_PAUSED, E.INCOMING_START)}
    assert DESTINATION_TRANSITIONS[(S.POSTCOPY_PAUSED, E.INCOMING_START)] is S.POSTCOPY_PAUSED
    # a paused postcopy never fails on a channel error: it waits for a recovery
    assert (S.POSTCOPY_PAUSED, E.ERROR) not in SOURCE_TRANSITIONS


def test_source_postcopy_run_with_a_recovery():
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: True)
    sm.start()
    for event in (
        E.SETUP_DONE,
        E.POSTCOPY_START,
        E.POSTCOPY_PAUSE,
        E.POSTCOPY_RECOVER,
        E.POSTCOPY_RESUMED,
        E.COMPLETE,
    ):
        sm.handle(event)
    assert rec.statuses() == [
        "setup",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "postcopy-active",
        "completed",
    ]


# -- whole runs, as the transcripts show them -----------------------------------------------


def test_source_precopy_run_like_d_multifd_zstd():
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: True)
    assert sm.start() is S.SETUP
    sm.handle(E.SETUP_DONE)
    sm.handle(E.COMPLETE)
    assert rec.statuses() == ["setup", "active", "completed"]


def test_source_pause_before_switchover_run():
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: True)
    sm.start()
    sm.handle(E.SETUP_DONE)
    sm.handle(E.PAUSE_BEFORE_SWITCHOVER)
    assert sm.is_running()
    sm.handle(E.CONTINUE)
    sm.handle(E.DEVICE_DONE)
    assert rec.statuses() == ["setup", "active", "pre-switchover", "device", "completed"]


def test_migrate_continue_in_wrong_state_raises_with_current_state():
    sm, _ = machine_in(Side.SOURCE, S.ACTIVE)
    with pytest.raises(InvalidTransition) as info:
        sm.handle(E.CONTINUE)
    # what a caller needs for "Migration not in expected state: active"
    assert f"Migration not in expected state: {info.value.state.value}" == (
        "Migration not in expected state: active"
    )


def test_cancel_then_new_migration_like_e_cancel():
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: True)
    sm.start()
    sm.handle(E.SETUP_DONE)
    sm.handle(E.CANCEL)
    sm.handle(E.CANCEL_DONE)
    # a second migrate_cancel when nothing runs is a silent no-op for the caller
    assert not sm.is_running()
    assert sm.try_handle(E.CANCEL) is None
    sm.start()  # the reset to none is silent
    sm.handle(E.SETUP_DONE)
    sm.handle(E.COMPLETE)
    assert rec.statuses() == [
        "setup",
        "active",
        "cancelling",
        "cancelled",
        "setup",
        "active",
        "completed",
    ]


def test_cancel_while_cancelling_emits_cancelling_again():
    sm, rec = machine_in(Side.SOURCE, S.CANCELLING)
    assert sm.handle(E.CANCEL) is S.CANCELLING
    assert rec.statuses() == ["cancelling"]


def test_bad_uri_setup_then_failed_without_error_desc_like_i_hmp():
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: True)
    sm.start()
    sm.handle(E.ERROR)
    assert rec.statuses() == ["setup", "failed"]
    assert sm.error_desc is None


def test_start_clears_error_and_works_from_every_terminal_state():
    for terminal in (S.NONE, S.COMPLETED, S.FAILED, S.CANCELLED):
        sm, rec = machine_in(Side.SOURCE, terminal)
        sm._error_desc = "old"
        assert sm.start() is S.SETUP
        assert sm.error_desc is None
        assert rec.statuses() == ["setup"]


@pytest.mark.parametrize("state", sorted(RUNNING_STATES, key=lambda s: s.value))
def test_start_refused_while_running(state):
    sm, rec = machine_in(Side.SOURCE, state)
    with pytest.raises(InvalidTransition):
        sm.start()
    assert sm.status is state and rec.events == []


def test_events_capability_read_at_each_swap():
    enabled = [False]
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: enabled[0])
    sm.start()
    enabled[0] = True
    sm.handle(E.SETUP_DONE)
    enabled[0] = False
    sm.handle(E.COMPLETE)
    assert rec.statuses() == ["active"]


# -- destination ------------------------------------------------------------------------------


@pytest.mark.parametrize("events_on", [True, False])
def test_destination_setup_event_is_unconditional_and_state_stays_none(events_on):
    rec = Recorder()
    sm = MigrationStateMachine(Side.DESTINATION, rec, lambda: events_on)
    assert sm.handle(E.INCOMING_START) is S.NONE
    assert sm.status is S.NONE
    assert rec.statuses() == ["setup"]
    sm.handle(E.CHANNELS_CONNECTED)
    sm.handle(E.COMPLETE)
    if events_on:  # d_multifd_zstd dst: setup, active, (RESUME), completed
        assert rec.statuses() == ["setup", "active", "completed"]
    else:  # i_hmp dst2: only the setup event
        assert rec.statuses() == ["setup"]


def test_destination_failure_like_e_cancel():
    rec = Recorder()
    sm = MigrationStateMachine(Side.DESTINATION, rec, lambda: True)
    sm.handle(E.INCOMING_START)
    sm.handle(E.CHANNELS_CONNECTED)
    assert sm.fail("load of migration failed: Invalid argument")
    assert rec.statuses() == ["setup", "active", "failed"]
    assert not sm.is_running()


def test_is_running_is_a_pure_function_of_the_state_on_the_destination_too():
    # QEMU's `migrate` checks the *outgoing* state only; callers ask the source machine.
    for state in (S.NONE, S.ACTIVE, S.COMPLETED, S.FAILED):
        sm, _ = machine_in(Side.DESTINATION, state)
        assert sm.is_running() is (state is S.ACTIVE)


def test_event_bus_delivers_qemu_shaped_event():
    bus = EventBus(clock=lambda: 1795795434.231314)
    got: list[dict[str, Any]] = []
    bus.subscribe(got.append)
    sm = MigrationStateMachine(Side.DESTINATION, bus.emit)
    sm.handle(E.INCOMING_START)
    assert len(got) == 1
    assert list(got[0]) == ["event", "timestamp", "data"]
    assert got[0]["event"] == "MIGRATION" and got[0]["data"] == {"status": "setup"}
    assert got[0]["timestamp"]["seconds"] == 1795795434


# -- compare-and-set and the failed -> failed double event ------------------------------------


def test_compare_and_set_only_from_expected_state():
    sm, rec = machine_in(Side.SOURCE, S.ACTIVE)
    assert not sm.compare_and_set(S.SETUP, E.ERROR)
    assert sm.status is S.ACTIVE and rec.events == []
    assert sm.compare_and_set(S.ACTIVE, E.ERROR)
    assert sm.status is S.FAILED and rec.statuses() == ["failed"]


def test_compare_and_set_refuses_pairs_outside_the_table():
    sm, rec = machine_in(Side.SOURCE, S.COMPLETED)
    with pytest.raises(InvalidTransition):
        sm.compare_and_set(S.COMPLETED, E.ERROR)
    assert sm.status is S.COMPLETED and rec.events == []


def test_destination_killed_gives_two_failed_events():
    """REC (facts §4.2, §7.2): a multifd send thread fails the migration, then the migration
    thread, which read the state as failed, swaps failed -> failed: a second event."""
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: True)
    sm.start()
    sm.handle(E.SETUP_DONE)
    assert sm.fail("Unable to write to socket: Broken pipe")  # channel thread
    observed = sm.status  # migration_detect_error reads the state ...
    sm.set_error("some later error")  # ... records its own error, which loses ...
    assert sm.compare_and_set(observed, E.ERROR)  # ... and swaps from what it read
    assert rec.statuses() == ["setup", "active", "failed", "failed"]
    assert sm.error_desc == "Unable to write to socket: Broken pipe"


def test_fail_from_non_failable_states_only_records():
    for state in set(MigrationStatus) - CHANNEL_FAILABLE_STATES:
        sm, rec = machine_in(Side.SOURCE, state)
        assert not sm.fail("boom")
        assert sm.status is state and rec.events == []
        assert sm.error_desc == "boom"


def test_fail_with_no_description():
    sm, rec = machine_in(Side.SOURCE, S.SETUP)
    assert sm.fail(None)
    assert sm.status is S.FAILED and sm.error_desc is None


# -- threads ------------------------------------------------------------------------------------


def test_first_error_wins_and_one_failed_event_under_threads():
    rec = Recorder()
    sm = MigrationStateMachine(Side.SOURCE, rec, lambda: True)
    sm.start()
    sm.handle(E.SETUP_DONE)
    n = 16
    barrier = threading.Barrier(n)
    kept: list[str] = []
    kept_lock = threading.Lock()

    def channel(i: int) -> None:
        barrier.wait()
        desc = f"channel {i} failed"
        sm.fail(desc)
        if sm.error_desc == desc:
            with kept_lock:
                kept.append(desc)

    threads = [threading.Thread(target=channel, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kept) == 1 and sm.error_desc == kept[0]
    assert rec.statuses() == ["setup", "active", "failed"]


def test_set_error_returns_whether_kept():
    sm, _ = machine_in(Side.SOURCE, S.ACTIVE)
    assert sm.set_error("first")
    assert not sm.set_error("second")
    assert sm.error_desc == "first"


def test_emitter_may_read_the_machine():
    """The lock is re-entrant: a subscriber reading the status does not deadlock, and sees the
    new state."""
    seen: list[MigrationStatus] = []
    sm: MigrationStateMachine

    def emit(name: str, data: dict[str, Any]) -> None:
        seen.append(sm.status)
        sm.allowed_events()

    sm = MigrationStateMachine(Side.SOURCE, emit, lambda: True)
    sm.start()
    assert seen == [S.SETUP]


def test_migrate_recover_emits_setup_and_stays_paused():
    sm, rec = machine_in(Side.DESTINATION, S.POSTCOPY_PAUSED, events_on=False)
    sm.handle(E.INCOMING_START)
    assert sm.status is S.POSTCOPY_PAUSED and rec.statuses() == ["setup"]
