"""The HTTP dashboard: a live page, a JSON API and Prometheus metrics (emulator layer).

A client of QMP commands and events like HMP: ``source`` (where data comes from), ``model``
(what is known, as plain state, and its /metrics text), ``hub`` (events in, queries out,
updates to pages), ``app`` (aiohttp routes), ``page`` (the front end) and ``service`` (the
listener); ``provider`` is the ``-dashboard`` hook. Only ``app`` and ``service`` import
aiohttp; the names below stay cheap to import for the command line.
"""

from migemu.emulator.dashboard.options import (
    DashboardOptionError,
    DashboardOptions,
    dashboard_options,
    parse_dashboard_option,
)
from migemu.emulator.dashboard.source import DataSource, MachineSource, QueryError

__all__ = [
    "DashboardOptionError",
    "DashboardOptions",
    "DataSource",
    "MachineSource",
    "QueryError",
    "dashboard_options",
    "parse_dashboard_option",
]
