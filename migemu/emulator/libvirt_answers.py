"""Real QEMU 7.2's recorded answers to libvirt 9.0's probe and start-up commands (emulator
layer).

``migemu/data/qemu-7.2/libvirt/{probe,domain}.json`` hold (request, reply) pairs recorded
from real QEMU 7.2 by ``migemu/tools/record_probe.py`` (never edited by hand). ``lookup``
finds the reply real QEMU gave to exactly these arguments; migemu serves it for the
commands it does not model (CPU models, QOM type and property lists, machine types).
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

SESSIONS = ("domain", "probe")  # searched in this order


@functools.cache
def _session(name: str) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    text = (
        resources.files("migemu") / "data" / "qemu-7.2" / "libvirt" / f"{name}.json"
    ).read_text()
    return tuple(
        (e["request"]["execute"], _key(e["request"].get("arguments", {})), e["reply"])
        for e in json.loads(text)
    )


def _key(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True)


def lookup(
    command: str, arguments: dict[str, Any], sessions: tuple[str, ...] = SESSIONS
) -> dict[str, Any] | None:
    """The recorded reply (``{"return": …}`` or ``{"error": …}``), or None; a fresh copy."""
    key = _key(arguments)
    for session in sessions:
        for name, args, reply in _session(session):
            if name == command and args == key:
                return copy.deepcopy(reply)
    return None


def recorded_arguments(command: str) -> list[dict[str, Any]]:
    """Every argument set a recording has for ``command`` (for error messages)."""
    out: list[dict[str, Any]] = []
    for session in SESSIONS:
        for name, args, _ in _session(session):
            if name == command and json.loads(args) not in out:
                out.append(json.loads(args))
    return out


@functools.cache
def qom_types() -> dict[str, str | None]:
    """Every QOM type of QEMU 7.2 (``qom-list-types abstract=true``): name -> parent."""
    reply = lookup("qom-list-types", {"abstract": True}, ("probe",))
    assert reply is not None, "qom-list-types is missing from the recording"
    return {t["name"]: t.get("parent") for t in reply["return"]}


def implements(type_name: str, ancestor: str) -> bool:
    types = qom_types()
    seen: set[str] = set()
    t: str | None = type_name
    while t is not None and t not in seen:
        if t == ancestor:
            return True
        seen.add(t)
        t = types.get(t)
    return False


@functools.cache
def device_types() -> frozenset[str]:
    """The -device driver names QEMU 7.2 (x86_64) accepts: non-abstract device types."""
    listed = lookup("qom-list-types", {}, ("probe",))
    assert listed is not None
    return frozenset(t["name"] for t in listed["return"] if implements(t["name"], "device"))
