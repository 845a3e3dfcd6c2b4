"""Byte sizes as QEMU's command line spells them ("256M", "1.5G", "0x1000").

Part of the emulator layer's command-line parser; also the one place that reads QEMU's sizes
and C integers for ``-global`` properties and HMP's ``migrate_set_parameter``. Rules observed
on QEMU 7.2: optional leading blanks and '+', a decimal number with an optional fraction or
a 0x hex integer, then at most one suffix b/k/M/G/T/P/E (any case, powers of 1024); nothing
may follow. A fraction needs a suffix other than 'b' unless it is zero, and is truncated to
whole bytes.
"""

from __future__ import annotations

import re

_SUFFIX_SHIFT = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_NUMBER = re.compile(
    r"[ \t\n\r\f\v]*\+?(?:(?P<hex>0[xX][0-9a-fA-F]+)|(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]*))?)"
    r"(?P<suffix>[bBkKmMgGtTpPeE]?)"
)
UINT64_MAX = (1 << 64) - 1


_C_UINT = re.compile(r"[ \t\n\r\f\v]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def parse_c_uint64(text: str) -> int | None:
    """C's ``strtoull(text, base 0)`` over the whole text, as QEMU's string visitors and
    properties read integers: hex, octal or decimal, a sign, negatives wrapping modulo 2^64;
    None if malformed or beyond 64 bits."""
    m = _C_UINT.fullmatch(text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits[1:], 8)  # a leading 0 means octal
    else:
        value = int(digits)
    if value > UINT64_MAX:
        return None
    return (-value) & UINT64_MAX if m.group(1) == "-" else value


class SizeError(ValueError):
    """The text is not a size; `out_of_range` tells an overflow from bad syntax."""

    def __init__(self, text: str, out_of_range: bool = False) -> None:
        super().__init__(text)
        self.out_of_range = out_of_range


def parse_size(text: str, default_suffix: str = "b") -> tuple[int, bool]:
    """Return (bytes, hex_with_suffix): the second is QEMU's deprecation-warning case."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        raise SizeError(text)
    suffix = m["suffix"] or default_suffix
    shift = _SUFFIX_SHIFT[suffix.lower()]
    if m["hex"] is not None:
        value = int(m["hex"], 16) << shift
        if value > UINT64_MAX:
            raise SizeError(text, out_of_range=True)
        return value, bool(m["suffix"]) or default_suffix != "b"
    whole = int(m["int"])
    frac_digits = m["frac"] or ""
    frac = float("0." + frac_digits) if frac_digits else 0.0
    if frac and shift == 0:
        raise SizeError(text)
    value = (whole << shift) + int(frac * float(1 << shift))
    if value > UINT64_MAX:
        raise SizeError(text, out_of_range=True)
    return value, False
