"""human-monitor-command: HMP text through QMP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migemu.emulator.hmp import HMPConsole

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def register(machine: Machine) -> None:
    console = HMPConsole(machine)

    def human_monitor_command(args: dict[str, Any]) -> str:
        return console.execute(args["command-line"])

    machine.dispatcher.register("human-monitor-command", human_monitor_command)
