"""Migration state of the emulator: parameters, capabilities (and the state machine).

Parameters and capabilities are pure functions over plain dicts: QEMU 7.2's defaults,
checks, messages and quirks, with no IO.
"""

from migemu.emulator.migration.capabilities import (
    CAPABILITY_NAMES,
    HostSupport,
    apply_global,
    check_capabilities,
    default_capabilities,
    query_capabilities,
    set_capabilities,
)
from migemu.emulator.migration.parameters import (
    MIGRATION_PROPERTIES,
    PARAMETER_NAMES,
    check_parameters,
    default_parameters,
    lookup_global,
    parse_global_value,
    query_parameters,
    set_global,
    set_parameters,
)

__all__ = [
    "CAPABILITY_NAMES",
    "MIGRATION_PROPERTIES",
    "PARAMETER_NAMES",
    "HostSupport",
    "apply_global",
    "check_capabilities",
    "check_parameters",
    "default_capabilities",
    "default_parameters",
    "lookup_global",
    "parse_global_value",
    "query_capabilities",
    "query_parameters",
    "set_capabilities",
    "set_global",
    "set_parameters",
]
