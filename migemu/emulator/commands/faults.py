"""Fault injection commands (migemu-only): x-migemu-inject-fault, -clear-faults, -query-faults,
-query-links; and ``-migemu-fault SPEC`` on the command line (emulator layer).

Faults are off unless one of these is used. The spec syntax and what each fault does are in
``emulator/migration/faults.py``; a bad spec is a GenericError naming the problem.
``services_for`` is the command-line side: it installs every ``-migemu-fault`` at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migemu.emulator.migration import faults
from migemu.emulator.startup import StartupError
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.cmdline import VMConfig
    from migemu.emulator.machine import Machine


def inject_fault(args: dict[str, Any]) -> dict[str, Any]:
    try:
        faults.inject(args["spec"])
    except faults.FaultSpecError as err:
        raise QMPError(str(err)) from err
    return {}


def clear_faults(args: dict[str, Any]) -> dict[str, Any]:
    faults.clear()
    return {}


def register(machine: Machine) -> None:
    d = machine.dispatcher
    d.register("x-migemu-inject-fault", inject_fault)
    d.register("x-migemu-clear-faults", clear_faults)
    d.register("x-migemu-query-faults", lambda args: faults.query_faults())
    d.register("x-migemu-query-links", lambda args: faults.query_links())


def services_for(config: VMConfig, machine: Machine) -> list[Any]:
    """``-migemu-fault SPEC`` (repeatable): inject at startup; no service runs."""
    for spec in getattr(config, "migemu_faults", ()):
        try:
            faults.inject(spec)
        except faults.FaultSpecError as err:
            raise StartupError(f"-migemu-fault {spec}: {err}") from err
    return []
