"""VM run state: stop/cont/autostart and their events, as QEMU 7.2 behaves (checked by hand
against qemu-system-x86_64 -machine none: stop emits STOP, cont RESUME, no-ops emit nothing)."""

from __future__ import annotations

import pytest

from migemu.emulator.events import EventBus
from migemu.emulator.runstate import RunState
from migemu.emulator.vm import VM
from migemu.qapi.errors import QMPError


def make(start_paused: bool = False, incoming: bool = False) -> tuple[VM, list[str]]:
    bus = EventBus(clock=lambda: 1.5)
    seen: list[str] = []
    bus.subscribe(lambda ev: seen.append(ev["event"]))
    return VM(bus, start_paused=start_paused, incoming=incoming), seen


def test_initial_states():
    assert make()[0].state is RunState.RUNNING
    assert make(start_paused=True)[0].state is RunState.PRELAUNCH
    assert make(incoming=True)[0].state is RunState.INMIGRATE


def test_stop_cont_events():
    vm, seen = make()
    vm.stop()
    assert vm.state is RunState.PAUSED and seen == ["STOP"]
    vm.stop()
    assert seen == ["STOP"]
    vm.cont()
    assert vm.state is RunState.RUNNING and seen == ["STOP", "RESUME"]
    vm.cont()
    assert seen == ["STOP", "RESUME"]


def test_prelaunch_stop_is_silent_and_cont_resumes():
    vm, seen = make(start_paused=True)
    vm.stop()
    assert vm.state is RunState.PRELAUNCH and seen == []
    vm.cont()
    assert vm.state is RunState.RUNNING and seen == ["RESUME"]


def test_incoming_stop_cont_only_change_autostart():
    vm, seen = make(incoming=True)
    vm.stop()
    assert not vm.autostart and vm.state is RunState.INMIGRATE
    vm.cont()
    assert vm.autostart and vm.state is RunState.INMIGRATE and seen == []


def test_cont_after_shutdown_needs_reset():
    vm, _ = make()
    vm.set_state(RunState.SHUTDOWN)
    with pytest.raises(QMPError, match="Resetting the Virtual Machine is required"):
        vm.cont()


def test_listener_sees_every_change():
    vm, _ = make()
    changes: list[tuple[RunState, RunState]] = []
    vm.add_listener(lambda old, new: changes.append((old, new)))
    vm.stop()
    vm.cont()
    assert changes == [(RunState.RUNNING, RunState.PAUSED), (RunState.PAUSED, RunState.RUNNING)]


def test_event_shape():
    bus = EventBus(clock=lambda: 1795799448.216735)
    ev = bus.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    assert list(ev) == ["event", "timestamp", "data"]
    assert ev["timestamp"]["seconds"] == 1795799448
    assert abs(ev["timestamp"]["microseconds"] - 216735) <= 1
    assert "data" not in bus.emit("STOP")
