"""migemu as a test library: start migemu VMs and migration pairs from Python and pytest.

The public API for users' own migration tests (asyncio first; ``migemu.testing.sync`` wraps
it for synchronous code). ``VM``/``start_vm`` run one migemu (or real QEMU 7.2) process with
a negotiated ``qemu.qmp`` client; ``MigrationPair`` runs a source and a destination with the
helpers of QEMU's migration qtest. The pytest plugin (``migemu.testing.plugin``, registered
as the ``pytest11`` entry point ``migemu``) offers them as the ``migemu_vm`` and
``migemu_pair`` fixtures. See docs/testing.md.
"""

from __future__ import annotations

from migemu.emulator.migration.faults import FaultSpecError
from migemu.testing.errors import (
    MigemuTestingError,
    MigrationFailedError,
    MigrationStatusError,
    MigrationTimeoutError,
    UnsupportedByQEMU,
    VMExitedError,
    VMStartError,
    VMStateError,
)
from migemu.testing.pair import CONVERGE, NON_CONVERGE, MigrationPair
from migemu.testing.vm import (
    BACKENDS,
    DEFAULT_TIMEOUT_S,
    PROFILES,
    QMP,
    VM,
    check_fault,
    migemu_command,
    qemu_command,
    start_vm,
)

__all__ = [
    "BACKENDS",
    "CONVERGE",
    "DEFAULT_TIMEOUT_S",
    "NON_CONVERGE",
    "PROFILES",
    "QMP",
    "VM",
    "FaultSpecError",
    "MigemuTestingError",
    "MigrationFailedError",
    "MigrationPair",
    "MigrationStatusError",
    "MigrationTimeoutError",
    "UnsupportedByQEMU",
    "VMExitedError",
    "VMStartError",
    "VMStateError",
    "check_fault",
    "migemu_command",
    "qemu_command",
    "start_vm",
]
