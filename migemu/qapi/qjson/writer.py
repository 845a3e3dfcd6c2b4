"""QEMU 7.2's JSON writer, byte for byte (qapi layer, no IO).

Compact form with ``", "`` and ``": "``; ASCII only, with ``\\uXXXX`` in upper-case hex (a
surrogate pair beyond the BMP, ``\\uFFFD`` for anything QEMU's modified UTF-8 decoder would
refuse); ``/`` and DEL handled like any other character (DEL escaped, ``/`` not); doubles with
``%.17g``, so ``inf``, ``-inf`` and ``nan`` come out bare. Object members come out in QDict hash
order: bucket ascending (512 buckets), and within a bucket the most recently inserted member
first. Callers build dicts in QEMU's insertion order (schema order for QAPI structs) and this
module does the reordering.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Final

QDICT_BUCKETS: Final = 512

_ESCAPE_RE: Final = re.compile('[\x00-\x1f"\\\\\x7f-\U0010ffff]')
_NAMED: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    cp = ord(ch)
    # QEMU strings are modified UTF-8 and its writer decodes them again: a lone surrogate or
    # a noncharacter does not survive that and is printed as the replacement character.
    if 0xD800 <= cp <= 0xDFFF or 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE:
        return "\\uFFFD"
    if cp > 0xFFFF:
        cp -= 0x10000
        return f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}"
    return f"\\u{cp:04X}"


_escape_cache: dict[str, str] = {}


def _escape_match(match: re.Match[str]) -> str:
    ch = match.group()
    try:
        return _escape_cache[ch]
    except KeyError:
        escaped = _escape_cache[ch] = _escape_char(ch)
        return escaped


def quote_string(text: str) -> str:
    """A JSON string literal as QEMU writes it."""
    return '"' + _ESCAPE_RE.sub(_escape_match, text) + '"'


def format_double(value: float) -> str:
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return f"{value:.17g}"


@lru_cache(maxsize=4096)
def qdict_bucket(key: str) -> int:
    """The QDict bucket of ``key`` (facts §9.5): QEMU's string hash, then mod 512."""
    data = key.encode("utf-8", "surrogatepass").replace(b"\x00", b"\xc0\x80")
    h = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, b in enumerate(data):
        h = (h + (b << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * h + 12345) & 0xFFFFFFFF) % QDICT_BUCKETS


def qdict_order(keys: list[str]) -> list[str]:
    """Keys in QEMU's output order, given them in insertion order."""
    ranked = sorted(range(len(keys)), key=lambda i: (qdict_bucket(keys[i]), -i))
    return [keys[i] for i in ranked]


def dumps(value: Any) -> str:
    """``value`` as QEMU 7.2 prints it (no line ending).

    Accepts dict (str keys, insertion order = QEMU's), list/tuple, str, int, float, bool and
    None. Iterative, so nesting as deep as the reader accepts does not hit Python's limit.
    """
    out: list[str] = []
    append = out.append
    # Work list, processed from the end: either literal text (str in a 1-tuple) or a value.
    work: list[Any] = [(value,)]
    pop = work.pop
    while work:
        item = pop()
        if type(item) is tuple:
            item = item[0]
        else:
            append(item)
            continue
        if item is None:
            append("null")
        elif item is True:
            append("true")
        elif item is False:
            append("false")
        elif isinstance(item, str):
            append(quote_string(item))
        elif isinstance(item, int):
            append(str(int(item)))
        elif isinstance(item, float):
            append(format_double(item))
        elif isinstance(item, dict):
            if not item:
                append("{}")
                continue
            keys = list(item)
            for key in keys:
                if not isinstance(key, str):
                    raise TypeError(f"JSON object key must be str, not {type(key).__name__}")
            keys = qdict_order(keys)
            append("{")
            work.append("}")
            for index in range(len(keys) - 1, -1, -1):
                key = keys[index]
                work.append((item[key],))
                work.append(quote_string(key) + ": ")
                if index:
                    work.append(", ")
        elif isinstance(item, (list, tuple)):
            if not item:
                append("[]")
                continue
            append("[")
            work.append("]")
            for index in range(len(item) - 1, -1, -1):
                work.append((item[index],))
                if index:
                    work.append(", ")
        else:
            raise TypeError(f"cannot write {type(item).__name__} as JSON")
    return "".join(out)


def encode_message(value: Any) -> bytes:
    """One QMP message on the wire: the text, then CRLF (QEMU's ``\\n`` through its CRLF filter)."""
    return (dumps(value) + "\r\n").encode("ascii")
