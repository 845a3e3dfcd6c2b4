"""Migration commands: capabilities, parameters and query-migrate."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def register(machine: Machine) -> None:
    d = machine.dispatcher
    settings = machine.migration

    d.register("query-migrate-capabilities", lambda args: settings.query_capabilities())
    d.register(
        "migrate-set-capabilities", lambda args: settings.set_capabilities(args["capabilities"])
    )
    d.register("query-migrate-parameters", lambda args: settings.query_parameters())
    d.register("migrate-set-parameters", lambda args: settings.set_parameters(args))
    mm = machine.migrations
    d.register("query-migrate", mm.query)
    d.register("migrate", mm.migrate)
    d.register("migrate-incoming", mm.migrate_incoming)
    d.register("migrate_cancel", mm.cancel)
    d.register("migrate-continue", mm.continue_)
    d.register("migrate-pause", mm.pause, allow_oob=True)
    d.register("migrate-start-postcopy", mm.start_postcopy)
    d.register("migrate-recover", mm.recover, allow_oob=True)
