"""The QAPI layer: schema, argument validation, introspection and the QMP error vocabulary.

No asyncio and no sockets here: everything is plain functions over the QAPI definitions in
``schema/*.json``, loaded once per process.
"""

from migemu.qapi.errors import CommandNotFound, QMPError
from migemu.qapi.introspect import query_commands, query_qmp_schema
from migemu.qapi.schema import (
    command_allows_oob,
    command_allows_preconfig,
    command_names,
    is_known_command,
    load_schema,
)
from migemu.qapi.validate import validate

__all__ = [
    "CommandNotFound",
    "QMPError",
    "command_allows_oob",
    "command_allows_preconfig",
    "command_names",
    "is_known_command",
    "load_schema",
    "query_commands",
    "query_qmp_schema",
    "validate",
]
