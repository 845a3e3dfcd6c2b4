"""QMP command handlers, one module per area (emulator layer).

Each module has ``register(machine)``, which adds its handlers to ``machine.dispatcher``.
Handlers take the validated arguments dict and return the QMP return value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def register_all(machine: Machine) -> None:
    from migemu.emulator.commands import control, faults, fds, hmp, migration, objects, probe, vm

    for module in (control, vm, migration, hmp, faults, fds, objects, probe):
        module.register(machine)
