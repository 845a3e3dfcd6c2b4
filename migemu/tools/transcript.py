"""QMP session transcripts: the JSONL format, placeholders and comparison helpers (tools layer).

A transcript is one JSON object per line: ``{"t", "mon", "dir", "msg", "raw"}`` for traffic
(``dir`` is ``c2s``, ``s2c`` or ``event``; ``raw`` holds the exact text on the wire) and
``{"t", "mon", "dir": "note", "text", "data"}`` for what the recorder observed (argv, exit
status, EOF). Host paths never appear in a transcript: they are written as placeholders
(``IMAGE_256M``, ``DST_RAM_<name>``, ``SOCK_<name>``) that :class:`Placeholders` maps to
real temporary paths when a session is recorded or replayed. Event timestamps are the one
part of the bytes that legitimately differs between runs; :func:`mask_timestamps` hides
their values but keeps the format and key order.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Entry = dict[str, Any]

DIR_C2S = "c2s"
DIR_S2C = "s2c"
DIR_EVENT = "event"
DIR_NOTE = "note"
DIRECTIONS = (DIR_C2S, DIR_S2C, DIR_EVENT, DIR_NOTE)

NOTE_STARTED = "qemu started"
NOTE_EXITED = "qemu exited"
NOTE_EOF = "EOF on QMP socket"
NOTE_CLOSED = "client closed the QMP socket"
# QEMU 7.2 race: a client that connects while QEMU is still starting can receive events
# emitted during start-up (RESUME, MIGRATION setup) *before* the greeting. They are kept
# as this note, not as traffic: no client can rely on them.
NOTE_EARLY_EVENT = "event before the greeting (start-up race)"

IMAGE_SIZE_BYTES = 256 * 1024 * 1024
PLACEHOLDER_RE = re.compile(r"\b(IMAGE_256M|DST_RAM_[A-Za-z0-9_-]+|SOCK_[A-Za-z0-9_-]+)")
_TIMESTAMP_RE = re.compile(r'\{"seconds": -?[0-9]+, "microseconds": -?[0-9]+\}')
TIMESTAMP_MASK = '{"seconds": S, "microseconds": U}'
_QMP_UNIX_RE = re.compile(r"^unix:([^,]+)")


# --- the JSONL format -------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> list[Entry]:
    """Read a transcript; every line must be a JSON object with a known ``dir``."""
    entries: list[Entry] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            entry = json.loads(line)
            if not isinstance(entry, dict) or entry.get("dir") not in DIRECTIONS:
                raise ValueError(f"{path}:{lineno}: not a transcript entry: {line!r}")
            entries.append(entry)
    return entries


def dumps(entry: Entry) -> str:
    """One transcript line (without the newline), in the shared transcripts' style."""
    return json.dumps(entry)


def save(path: str | os.PathLike[str], entries: Iterable[Entry]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for entry in entries:
            f.write(dumps(entry) + "\n")


def parse_msg(raw: str) -> Any:
    """The JSON value of one wire line for the ``msg`` member; None when Python cannot parse
    it (malformed input, single quotes, several objects on one line)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def is_event(raw: str) -> bool:
    msg = parse_msg(raw)
    return isinstance(msg, dict) and "event" in msg and "timestamp" in msg


def is_greeting(raw: str) -> bool:
    return raw.startswith('{"QMP": ')


def traffic(entries: Iterable[Entry], mon: str | None = None) -> Iterator[Entry]:
    """The c2s/s2c/event entries, optionally of one monitor."""
    for e in entries:
        if e["dir"] != DIR_NOTE and (mon is None or e["mon"] == mon):
            yield e


def started(entries: Iterable[Entry]) -> dict[str, list[str]]:
    """Monitor name -> the argv (with placeholders) its process was started with."""
    return {
        e["mon"]: list(e["data"]["argv"])
        for e in entries
        if e["dir"] == DIR_NOTE and e.get("text") == NOTE_STARTED
    }


def qmp_socket(argv: list[str]) -> str | None:
    """The unix socket path (or placeholder) of the first ``-qmp unix:...`` option."""
    for opt, value in zip(argv, argv[1:], strict=False):
        if opt in ("-qmp", "--qmp"):
            m = _QMP_UNIX_RE.match(value)
            if m:
                return m.group(1)
    return None


# --- placeholders -------------------------------------------------------------------------


@dataclass
class Placeholders:
    """Maps placeholder names to real paths below one temporary directory.

    Paths are allocated on first use: IMAGE_256M and DST_RAM_* become sparse 256 MiB files
    (QEMU maps them as guest RAM), SOCK_* become socket paths that do not exist yet.
    """

    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    def path(self, name: str) -> str:
        if name not in self.paths:
            real = self.root / name
            if not name.startswith("SOCK_"):
                with open(real, "wb") as f:
                    f.truncate(IMAGE_SIZE_BYTES)
            self.paths[name] = str(real)
        return self.paths[name]

    def substitute(self, text: str) -> str:
        """Placeholders -> real paths."""
        return PLACEHOLDER_RE.sub(lambda m: self.path(m.group(1)), text)

    def substitute_argv(self, argv: list[str]) -> list[str]:
        return [self.substitute(a) for a in argv]

    def unsubstitute(self, text: str) -> str:
        """Real paths -> placeholders (longest path first, so no path eats another)."""
        for name, real in sorted(self.paths.items(), key=lambda kv: -len(kv[1])):
            text = text.replace(real, name)
        return text

    def cleanup(self) -> None:
        for real in self.paths.values():
            try:
                os.unlink(real)
            except FileNotFoundError:
                pass


# --- comparison ---------------------------------------------------------------------------


# The one difference migemu shows on purpose: its package string names migemu (greeting,
# query-version, HMP ``info version``). Replays map it to what the recording's QEMU said.
QEMU_PACKAGE = "Debian 1:7.2+dfsg-7+deb12u18+b3"


def as_recorded_package(text: str, package: str) -> str:
    """``text`` with ``package`` (the binary's own) replaced by the recorded QEMU's."""
    return text.replace(package, QEMU_PACKAGE)


def mask_timestamps(raw: str) -> str:
    """Hide the values of every event timestamp, keeping its text shape and position."""
    return _TIMESTAMP_RE.sub(TIMESTAMP_MASK, raw)


def expected_line(entry: Entry) -> str:
    """What a replay must receive for an s2c/event entry, in comparable form."""
    raw: str = entry["raw"]
    return mask_timestamps(raw) if entry["dir"] == DIR_EVENT else raw


def describe_mismatch(expected: str, actual: str) -> str:
    """A short explanation pointing at the first differing character."""
    i = next(
        (k for k, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    return (
        f"first difference at offset {i}:\n"
        f"  expected: {expected!r}\n"
        f"  actual:   {actual!r}\n"
        f"  expected[{i}:]: {expected[i : i + 60]!r}\n"
        f"  actual[{i}:]:   {actual[i : i + 60]!r}"
    )


def signature(entry: Entry) -> str:
    """What must be equal between two recordings of the same scenario: everything but
    times, pids and event timestamp values, ordered per monitor."""
    if entry["dir"] == DIR_NOTE:
        data = entry.get("data")
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "pid"}
        return f"{entry['mon']} note {entry.get('text')} {json.dumps(data)}"
    raw = mask_timestamps(entry["raw"]) if entry["dir"] == DIR_EVENT else entry["raw"]
    return f"{entry['mon']} {entry['dir']} {raw!r}"


def diff(expected: list[Entry], actual: list[Entry]) -> list[str]:
    """Unified diff of two transcripts' signatures, one monitor after another (their
    interleaving is timing); empty when they agree."""
    mons = list(dict.fromkeys(e["mon"] for e in [*expected, *actual]))
    lines: list[str] = []
    for mon in mons:
        a = [signature(e) for e in expected if e["mon"] == mon]
        b = [signature(e) for e in actual if e["mon"] == mon]
        lines += difflib.unified_diff(a, b, "expected", "actual", lineterm="", n=1)
    return lines


def save_or_check(out: Path, entries: list[Entry], check: bool) -> bool:
    """A recorder's last step: write ``entries`` to ``out``, or with ``check`` compare them
    with the committed file and print the differences. Returns whether they differ."""
    if not check:
        save(out, entries)
        print(f"{out}: {len(entries)} entries", file=sys.stderr)
        return False
    differences = diff(load(out), entries) if out.exists() else ["(missing)"]
    print(f"{out}: {'differs' if differences else 'same'}", file=sys.stderr)
    for line in differences:
        print(line)
    return bool(differences)
