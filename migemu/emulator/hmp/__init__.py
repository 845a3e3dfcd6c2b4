"""HMP, QEMU's human monitor: text commands on top of the QMP command handlers."""

from migemu.emulator.hmp.console import HMPConsole

__all__ = ["HMPConsole"]
