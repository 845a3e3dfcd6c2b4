"""Run-state commands: query-status, query-name, query-uuid, stop, cont."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def register(machine: Machine) -> None:
    d = machine.dispatcher
    vm = machine.vm

    def query_name(args: dict[str, Any]) -> dict[str, Any]:
        name = machine.options.name
        return {} if name is None else {"name": name}

    d.register("query-status", lambda args: vm.status_info())
    d.register("query-name", query_name)
    d.register("query-uuid", lambda args: {"UUID": machine.uuid})
    d.register("stop", lambda args: vm.stop())
    d.register("query-memdev", lambda args: [dict(m) for m in machine.options.memdevs])
    d.register("x-migemu-set-guest", lambda args: machine.set_guest(args["spec"]))
    d.register("cont", lambda args: vm.cont())
