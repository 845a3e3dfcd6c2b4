"""Parsing HMP argument text the way QEMU 7.2's string input visitor does (emulator layer).

``migrate_set_parameter NAME VALUE`` turns VALUE into a typed value with QEMU's rules and error
texts: unsigned integers with C's base-0 parsing (negative numbers wrap, then fail the range
check), sizes with k/M/G/T/P/E suffixes, ``on``/``off`` style booleans. These are pure
functions raising ``QMPError`` with QEMU's exact message.
"""

from __future__ import annotations

from migemu.emulator.cmdline.sizes import SizeError, parse_c_uint64
from migemu.emulator.cmdline.sizes import parse_size as _strtosz
from migemu.qapi.errors import QMPError

SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)
_DEFAULT_SUFFIX = {0: "b", 20: "m"}

TRUE_WORDS = frozenset({"on", "yes", "true", "y"})
FALSE_WORDS = frozenset({"off", "no", "false", "n"})


def parse_uint(name: str, text: str, bits: int) -> int:
    value = parse_c_uint64(text)
    if value is None:
        raise QMPError(f"Parameter '{name}' expects uint64")
    if bits < 64 and value >= 1 << bits:
        raise QMPError(f"Parameter '{name}' expects uint{bits}_t")
    return value


def parse_size(text: str, default_shift: int = 0) -> int | None:
    """QEMU's ``qemu_strtosz`` (default unit ``1 << default_shift``); None if invalid."""
    try:
        return _strtosz(text, _DEFAULT_SUFFIX[default_shift])[0]
    except SizeError:
        return None


def parse_size_param(name: str, text: str) -> int:
    """A size member as the string visitor reads it (``parse_option_size``)."""
    try:
        return _strtosz(text)[0]
    except SizeError as err:
        if err.out_of_range:
            raise QMPError(f"Value '{text}' is out of range for parameter '{name}'") from err
        raise QMPError(
            f"Parameter '{name}' expects a non-negative number below 2^64\n{SIZE_HINT}"
        ) from err


def parse_bool(name: str, text: str) -> bool:
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise QMPError(f"Parameter '{name}' expects 'on' or 'off'")
