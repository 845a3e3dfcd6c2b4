"""Parsing HMP argument text the way QEMU 7.2's string input visitor does (emulator layer).

``migrate_set_parameter NAME VALUE`` turns VALUE into a typed value with QEMU's rules and error
texts: unsigned integers with C's base-0 parsing (negative numbers wrap, then fail the range
check), sizes with k/M/G/T/P/E suffixes, ``on``/``off`` style booleans. These are pure
functions raising ``QMPError`` with QEMU's exact message.
"""

from __future__ import annotations

import re

from migemu.qapi.errors import QMPError

U64_MAX = (1 << 64) - 1
SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)
_SUFFIXES = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_INT_RE = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
_SIZE_RE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?)([bBkKmMgGtTpPeE]?)\Z")

TRUE_WORDS = frozenset({"on", "yes", "true", "y"})
FALSE_WORDS = frozenset({"off", "no", "false", "n"})


def parse_c_uint64(text: str) -> int | None:
    """``strtoull(text, base 0)`` on the whole string; negative values wrap as in C."""
    m = _INT_RE.match(text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2].lower() == "0x":
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)  # C's base 0: a leading 0 means octal
    else:
        value = int(digits)
    if value > U64_MAX:
        return None
    return (-value) & U64_MAX if m.group(1) == "-" else value


def parse_uint(name: str, text: str, bits: int) -> int:
    value = parse_c_uint64(text)
    if value is None:
        raise QMPError(f"Parameter '{name}' expects uint64")
    if bits < 64 and value >= 1 << bits:
        raise QMPError(f"Parameter '{name}' expects uint{bits}_t")
    return value


def parse_size(text: str, default_shift: int = 0) -> int | None:
    """QEMU's ``qemu_strtosz``: a number, optional fraction, optional unit suffix."""
    m = _SIZE_RE.match(text)
    if m is None:
        return None
    number, suffix = m.group(1), m.group(2).lower()
    shift = _SUFFIXES[suffix] if suffix else default_shift
    if number.lower().startswith("0x"):
        if "." in number or suffix in ("b", "e"):
            return None
        value = int(number, 16) << shift
    elif "." in number:
        whole, frac = number.split(".")
        scaled = (int(whole or "0") << shift) + int((float("0." + (frac or "0"))) * (1 << shift))
        if shift == 0 and frac.strip("0"):
            return None
        value = scaled
    else:
        value = int(number) << shift
    return value if value <= U64_MAX else None


def parse_size_param(name: str, text: str) -> int:
    value = parse_size(text)
    if value is None:
        raise QMPError(f"Parameter '{name}' expects a non-negative number below 2^64\n{SIZE_HINT}")
    return value


def parse_bool(name: str, text: str) -> bool:
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise QMPError(f"Parameter '{name}' expects 'on' or 'off'")
