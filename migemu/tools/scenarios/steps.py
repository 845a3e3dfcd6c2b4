"""Builders for recorder steps (tools layer).

A scenario is a plain list of step dicts that the recorder interprets (``record.py``); these
functions only spell the common steps and the standard ``-machine none`` argv in one place,
so a scenario reads as the QMP conversation it records. ``qmp()`` writes requests the way
the shared transcripts do (``json.dumps`` with ``", "``/``": "`` separators, one ``\\n``);
``send()`` takes any raw text for everything a well-behaved client would never send.
"""

from __future__ import annotations

import json
from typing import Any

Step = dict[str, Any]

_MISSING: Any = object()


def qemu_argv(scenario: str, mon: str, *extra: str, share: bool = False) -> list[str]:
    """The shared transcripts' argv: no devices, 256 MiB of file-backed RAM, QMP on a unix
    socket. A source maps IMAGE_256M privately; a destination (``share=True``) its own file."""
    mem = f"DST_RAM_{scenario}-{mon}" if share else "IMAGE_256M"
    return [
        "qemu-system-x86_64",
        "-machine",
        "none",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "256M",
        "-object",
        f"memory-backend-file,id=mem0,size=256M,mem-path={mem},share={'on' if share else 'off'}",
        "-machine",
        "memory-backend=mem0",
        "-qmp",
        f"unix:SOCK_{scenario}-{mon},server=on,wait=off",
        *extra,
    ]


def start(mon: str, argv: list[str]) -> Step:
    return {"op": "start", "mon": mon, "argv": argv}


def connect(mon: str) -> Step:
    """Connect and record the greeting."""
    return {"op": "connect", "mon": mon}


def send(mon: str, raw: str, replies: int = 1, events: int = 0, quiet: float = 0.0) -> Step:
    """Send ``raw`` exactly; wait for ``replies`` non-event lines and ``events`` events, then
    (with ``quiet``) for that many seconds of silence to catch anything unexpected."""
    step: Step = {"op": "send", "mon": mon, "raw": raw}
    if replies != 1:
        step["replies"] = replies
    if events:
        step["events"] = events
    if quiet:
        step["quiet"] = quiet
    return step


def request(command: str, arguments: Any = _MISSING, id: Any = _MISSING) -> str:  # noqa: A002
    msg: dict[str, Any] = {"execute": command}
    if arguments is not _MISSING:
        msg["arguments"] = arguments
    if id is not _MISSING:
        msg["id"] = id
    return json.dumps(msg) + "\n"


def qmp(
    mon: str,
    command: str,
    arguments: Any = _MISSING,
    id: Any = _MISSING,  # noqa: A002
    events: int = 0,
) -> Step:
    return send(mon, request(command, arguments, id), events=events)


def session(scenario: str, mon: str, *extra: str, share: bool = False) -> list[Step]:
    """Start an instance, connect, and negotiate capabilities."""
    return [
        start(mon, qemu_argv(scenario, mon, *extra, share=share)),
        connect(mon),
        qmp(mon, "qmp_capabilities"),
    ]


def quit_(mon: str) -> list[Step]:
    """``quit``: the SHUTDOWN event, the reply, the socket closing, exit status 0."""
    return [
        send(mon, request("quit"), events=1),
        {"op": "eof", "mon": mon},
        {"op": "exit", "mon": mon},
    ]
