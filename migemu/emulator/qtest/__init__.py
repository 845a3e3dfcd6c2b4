"""QEMU's qtest protocol (``-qtest``/``-qtest-log``) in the emulator layer: the sans-IO
protocol core, guest-physical memory over the RAM blocks, and the socket service that
``migemu`` runs beside its QMP monitors so libqtest-style harnesses can drive it."""

from migemu.emulator.qtest.memory import PhysicalMemory, RAMMapping, ram_layout
from migemu.emulator.qtest.protocol import (
    QtestArgumentError,
    QtestLog,
    QtestProtocol,
    decode_write_hex,
    parse_c_uint,
)

__all__ = [
    "PhysicalMemory",
    "QtestArgumentError",
    "QtestLog",
    "QtestProtocol",
    "RAMMapping",
    "decode_write_hex",
    "parse_c_uint",
    "ram_layout",
]
