"""Monitor-level commands: query-version, query-commands, query-qmp-schema, quit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migemu.emulator.machine import version_info
from migemu.qapi import query_commands, query_qmp_schema

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def register(machine: Machine) -> None:
    d = machine.dispatcher

    def quit_(args: dict[str, Any]) -> None:
        machine.request_shutdown("host-qmp-quit")

    d.register("query-version", lambda args: version_info())
    d.register("query-commands", lambda args: query_commands())
    d.register("query-qmp-schema", lambda args: query_qmp_schema())
    d.register("quit", quit_)
