"""VM run states and the transitions QMP can cause (emulator layer).

``RunState`` values are the exact QAPI strings of QEMU 7.2's RunState enum. The VM model in
``vm.py`` owns the current state; this module only names the states and says which of them
count as "running" and which need a reset before ``cont``.
"""

from __future__ import annotations

from enum import Enum


class RunState(Enum):
    DEBUG = "debug"
    INMIGRATE = "inmigrate"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    PAUSED = "paused"
    POSTMIGRATE = "postmigrate"
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    RUNNING = "running"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    WATCHDOG = "watchdog"
    GUEST_PANICKED = "guest-panicked"
    COLO = "colo"


# States from which `cont` is refused until the guest is reset (runstate_needs_reset()).
NEEDS_RESET = frozenset({RunState.INTERNAL_ERROR, RunState.SHUTDOWN, RunState.GUEST_PANICKED})
