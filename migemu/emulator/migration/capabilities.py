"""Migration capabilities: QEMU 7.2's 21 switches and their compatibility rules (emulator).

A capability set is a dict ``{wire name: bool}`` in ``MigrationCapability`` enum order.
``set_capabilities`` is ``migrate-set-capabilities`` after QAPI validation: refused while a
migration runs, otherwise the request is overlaid on the current set (later entries win) and
the *merged* set goes through 7.2's ``migrate_caps_check`` in its order; nothing is applied
unless every rule passes. Host facts QEMU probes (userfaultfd for postcopy, write tracking
for background snapshots) are arguments, defaulting to what a Linux host with
``-machine none`` reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from migemu.emulator.migration.parameters import (
    MIGRATION_PROPERTIES,
    parse_global_value,
)
from migemu.emulator.migration.parameters import set_global as set_global_parameter
from migemu.qapi.errors import QMPError

CAPABILITY_NAMES: tuple[str, ...] = (
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
)

# Capabilities background-snapshot refuses, in the order 7.2 checks them (observed on
# 7.2.22: block, events, zero-blocks and x-ignore-shared are allowed with it).
BACKGROUND_SNAPSHOT_INCOMPATIBLE: tuple[str, ...] = (
    "postcopy-ram",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "return-path",
    "multifd",
    "pause-before-switchover",
    "auto-converge",
    "release-ram",
    "rdma-pin-all",
    "compress",
    "xbzrle",
    "x-colo",
    "validate-uuid",
    "zero-copy-send",
)

MIGRATION_ACTIVE = "There's a migration process in progress"


@dataclass(frozen=True)
class HostSupport:
    """What QEMU finds out about the host when a capability is switched on."""

    postcopy_ram: bool = True
    write_tracking: bool = True  # userfaultfd write-protect, for background-snapshot
    write_tracking_compatible: bool = True  # guest RAM layout allows it


def default_capabilities() -> dict[str, bool]:
    return dict.fromkeys(CAPABILITY_NAMES, False)


def _first_error(
    old: Mapping[str, bool],
    caps: Mapping[str, bool],
    *,
    incoming: bool,
    multi_channel_allowed: bool,
    parameters: Mapping[str, Any] | None,
    host: HostSupport,
) -> str | None:
    """QEMU 7.2's migrate_caps_check on the merged set ``caps``, in its order."""
    if caps["postcopy-ram"]:
        # QEMU probes the host only when postcopy-ram is newly set on a destination.
        if not old["postcopy-ram"] and incoming and not host.postcopy_ram:
            return "Postcopy is not supported"
        if caps["x-ignore-shared"]:
            return "Postcopy is not compatible with ignore-shared"
    if caps["background-snapshot"]:
        if not host.write_tracking:
            return "Background-snapshot is not supported by host kernel"
        if not host.write_tracking_compatible:
            return "Background-snapshot is not compatible with guest memory configuration"
        for other in BACKGROUND_SNAPSHOT_INCOMPATIBLE:
            if caps[other]:
                return f"Background-snapshot is not compatible with {other}"
    if caps["zero-copy-send"]:
        params = parameters or {}
        if (
            not caps["multifd"]
            or caps["compress"]
            or caps["xbzrle"]
            or params.get("multifd-compression", "none") != "none"
            or params.get("tls-creds", "")
        ):
            return "Zero copy only available for non-compressed non-TLS multifd migration"
    if incoming and not multi_channel_allowed and caps["multifd"]:
        return "multifd is not supported by current protocol"
    if caps["postcopy-preempt"]:
        if not caps["postcopy-ram"]:
            return "Postcopy preempt requires postcopy-ram"
        if caps["compress"]:
            return "Postcopy preempt not compatible with compress"
    if caps["multifd"] and caps["compress"]:
        return "Multifd is not compatible with compress"
    return None


def check_capabilities(
    old: Mapping[str, bool],
    new: Mapping[str, bool],
    *,
    incoming: bool = False,
    multi_channel_allowed: bool = True,
    parameters: Mapping[str, Any] | None = None,
    host: HostSupport = HostSupport(),
) -> None:
    """Raise ``QMPError`` if the merged set ``new`` (coming from ``old``) is not allowed."""
    err = _first_error(
        old,
        new,
        incoming=incoming,
        multi_channel_allowed=multi_channel_allowed,
        parameters=parameters,
        host=host,
    )
    if err is not None:
        raise QMPError(err)


def set_capabilities(
    current: Mapping[str, bool],
    request: Iterable[Mapping[str, Any]],
    *,
    migration_running: bool,
    incoming: bool = False,
    multi_channel_allowed: bool = True,
    parameters: Mapping[str, Any] | None = None,
    host: HostSupport = HostSupport(),
) -> dict[str, bool]:
    """``migrate-set-capabilities``: the new set, or ``QMPError`` and no change.

    ``request`` is the validated ``capabilities`` list. ``incoming`` means the runstate is
    ``inmigrate`` (a destination); ``multi_channel_allowed`` is false once the incoming URI
    is not tcp/unix/vsock; ``parameters`` supplies multifd-compression and tls-creds for the
    zero-copy rule.
    """
    if migration_running:
        raise QMPError(MIGRATION_ACTIVE)
    merged = dict(current)
    for entry in request:
        merged[entry["capability"]] = bool(entry["state"])
    check_capabilities(
        current,
        merged,
        incoming=incoming,
        multi_channel_allowed=multi_channel_allowed,
        parameters=parameters,
        host=host,
    )
    return {name: merged[name] for name in CAPABILITY_NAMES}


def query_capabilities(caps: Mapping[str, bool]) -> list[dict[str, Any]]:
    """The ``query-migrate-capabilities`` result: one entry per capability, enum order."""
    return [{"capability": name, "state": bool(caps[name])} for name in CAPABILITY_NAMES]


def set_global(current: Mapping[str, bool], prop: str, text: str) -> dict[str, bool]:
    """Apply ``-global migration.x-<cap>=on|off``; checked later with ``check_capabilities``.

    At startup QEMU checks the enabled set against an all-off old set, after the parameter
    check: ``check_capabilities(default_capabilities(), caps, parameters=params)``.
    """
    p = MIGRATION_PROPERTIES.get(prop)
    try:
        if p is None:
            raise QMPError(f"Property 'migration.{prop}' not found")
        if p.kind != "capability":
            raise ValueError(f"migration.{prop} is a {p.kind} property, not a capability")
        value = parse_global_value(p, text)
    except QMPError as err:
        raise QMPError(f"can't apply global migration.{prop}={text}: {err.desc}") from err
    return {**current, p.target: bool(value)}


def apply_global(
    params: Mapping[str, Any], caps: Mapping[str, bool], prop: str, text: str
) -> tuple[dict[str, Any], dict[str, bool]]:
    """Route one ``-global migration.<prop>=<text>`` to the parameters or the capabilities.

    Errors carry QEMU's full text, ``can't apply global migration.P=V: ...`` (an unknown
    property included). MigrationState properties (``store-global-state``, ...) are parsed
    and checked but change neither set. After all globals, QEMU checks the result with
    ``check_parameters`` then ``check_capabilities(default_capabilities(), caps, ...)``.
    """
    p = MIGRATION_PROPERTIES.get(prop)
    if p is not None and p.kind == "capability":
        return dict(params), set_global(caps, prop, text)
    if p is not None and p.kind == "state":
        try:
            parse_global_value(p, text)
        except QMPError as err:
            raise QMPError(f"can't apply global migration.{prop}={text}: {err.desc}") from err
        return dict(params), dict(caps)
    return set_global_parameter(params, prop, text), dict(caps)
