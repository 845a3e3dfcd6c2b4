"""human-monitor-command: HMP text through QMP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migemu.emulator.hmp import HMPConsole
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def register(machine: Machine) -> None:
    console = HMPConsole(machine)

    def human_monitor_command(args: dict[str, Any]) -> str:
        cpu = args.get("cpu-index")
        if cpu is not None and not 0 <= cpu < machine.options.cpus:
            raise QMPError("Parameter 'cpu-index' expects a CPU number")
        return console.execute(args["command-line"])

    machine.dispatcher.register("human-monitor-command", human_monitor_command)
