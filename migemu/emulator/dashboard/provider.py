"""``-dashboard`` on the command line -> the dashboard service (a ``cli.SERVICE_PROVIDERS`` hook).

Kept apart from ``service`` so that a ``migemu`` without ``-dashboard`` never imports aiohttp
(about 0.2 s of start-up). The service reads the machine only through a ``MachineSource``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migemu.emulator.dashboard.options import DashboardOptionError, dashboard_options
from migemu.emulator.dashboard.source import MachineSource
from migemu.emulator.startup import StartupError

if TYPE_CHECKING:
    from migemu.emulator.cmdline import VMConfig
    from migemu.emulator.machine import Machine
    from migemu.emulator.runtime import Service


def services_for(config: VMConfig, machine: Machine) -> list[Service]:
    """One dashboard for this machine when ``-dashboard`` was given, else nothing."""
    try:
        options = dashboard_options(config.dashboard)
    except DashboardOptionError as err:
        raise StartupError(f"-dashboard: {err}") from err
    if options is None:
        return []
    from migemu.emulator.dashboard.service import DashboardServer  # imports aiohttp

    return [DashboardServer([MachineSource(machine)], options, prog_name=config.prog_name)]
