"""The command line: `qemu-system-x86_64`-style argv -> VMConfig, with QEMU 7.2's errors.

Part of the emulator layer, pure. `parse_command_line` is the entry point; it raises
CmdlineError (stderr text, exit 1) or CmdlineExit (-version/-h text for stdout, exit 0).
"""

from .config import (
    AccelConfig,
    ChardevConfig,
    GlobalProperty,
    GuestWorkload,
    IncomingConfig,
    MachineConfig,
    MemoryBackendConfig,
    MemoryConfig,
    MonitorConfig,
    SerialConfig,
    VMConfig,
)
from .parser import (
    OPTIONS,
    CmdlineError,
    CmdlineExit,
    OptionSpec,
    help_text,
    parse_command_line,
    version_text,
)
from .sizes import SizeError, parse_size

__all__ = [
    "OPTIONS",
    "AccelConfig",
    "ChardevConfig",
    "CmdlineError",
    "CmdlineExit",
    "GlobalProperty",
    "GuestWorkload",
    "IncomingConfig",
    "MachineConfig",
    "MemoryBackendConfig",
    "MemoryConfig",
    "MonitorConfig",
    "OptionSpec",
    "SerialConfig",
    "SizeError",
    "VMConfig",
    "help_text",
    "parse_command_line",
    "parse_size",
    "version_text",
]
