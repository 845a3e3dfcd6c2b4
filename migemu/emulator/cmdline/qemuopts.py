"""The comma-separated option syntax of QEMU's command line ("QemuOpts" and "keyval").

Part of the emulator layer's command-line parser. `split_opts` cuts "a=1,b,,c=2" into
(key, value) pairs, ",," standing for a literal comma; a first element without '=' belongs
to the option's implied key. The two dialects differ only in elements without '=' later on:
QemuOpts treats them as short-form booleans ("server" = on, "nowait" = wait off, with a
deprecation warning), keyval (-machine) rejects them.
"""

from __future__ import annotations

from dataclasses import dataclass

TRUE_WORDS = frozenset({"on", "yes", "true", "y"})
FALSE_WORDS = frozenset({"off", "no", "false", "n"})


class OptsSyntaxError(ValueError):
    """A syntax error; the message is QEMU's text without the location prefix."""


@dataclass(frozen=True)
class OptPair:
    key: str
    value: str
    short_form: bool = False  # came from "key" / "nokey" without '='
    raw: str = ""  # the element as typed, for the deprecation warning


def _split_escaped(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def split_opts(text: str, implied_key: str | None, keyval: bool = False) -> list[OptPair]:
    """Split an option argument into ordered pairs (repeated keys are all kept)."""
    pairs: list[OptPair] = []
    if text == "":
        return pairs
    # The implied key applies when no '=' comes before the first comma, as typed.
    implied = implied_key is not None and "=" not in text.split(",", 1)[0]
    if keyval and implied:
        # keyval's implied value ends at the first comma: ",," does not escape there.
        head, comma, text = text.partition(",")
        if comma and (head == "" or text.startswith(",")):
            raise OptsSyntaxError("Invalid parameter ''")
        pairs.append(OptPair(str(implied_key), head))
        if not comma:
            return pairs
        implied = False
    elements = _split_escaped(text)
    if keyval and elements[0] == "" and len(elements) > 1:
        raise OptsSyntaxError("Invalid parameter ''")
    for index, element in enumerate(elements):
        key, eq, value = element.partition("=")
        if index == 0 and implied:
            pairs.append(OptPair(str(implied_key), element))
        elif eq:
            pairs.append(OptPair(key, value))
        elif element == "" and (not keyval or index == len(elements) - 1):
            continue  # an empty element (a trailing comma) is skipped
        elif keyval:
            raise OptsSyntaxError(f"Expected '=' after parameter '{element}'")
        elif element.startswith("no") and element != "no":
            pairs.append(OptPair(element[2:], "off", True, element))
        else:
            pairs.append(OptPair(element, "on", True, element))
    return pairs


def short_form_warnings(pairs: list[OptPair]) -> list[str]:
    """QEMU's deprecation text for short-form booleans, one message per pair."""
    out = []
    for pair in pairs:
        if pair.short_form:
            out.append(
                f"warning: short-form boolean option '{pair.raw}' deprecated\n"
                f"Please use {pair.key}={pair.value} instead"
            )
    return out


def parse_bool(name: str, value: str) -> bool:
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise OptsSyntaxError(f"Parameter '{name}' expects 'on' or 'off'")


def last_values(pairs: list[OptPair]) -> dict[str, str]:
    """Key -> value with the last occurrence winning, in first-seen order."""
    out: dict[str, str] = {}
    for pair in pairs:
        out[pair.key] = pair.value
    return out
