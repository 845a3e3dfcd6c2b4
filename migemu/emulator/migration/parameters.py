"""Migration parameters: QEMU 7.2's defaults, checks and quirks, as pure functions (emulator).

A parameter set is a plain dict keyed by wire name (``multifd-channels``), in
``MigrationParameters`` member order. ``set_parameters`` is ``migrate-set-parameters`` after
the QAPI visitor (``migemu.qapi.validate``) accepted the arguments: it overlays the request on
the current set, checks the *merged* set in QEMU's order (first failure wins, messages use
the C field names with underscores) and applies nothing unless every check passes. Two 7.2
quirks are kept on purpose: ``multifd-zlib-level``/``multifd-zstd-level`` given over QMP are
accepted but neither checked nor stored, and ``tls-*: null`` is stored as ``""``.
``-global migration.PROP=VALUE`` (the only way to set those levels in 7.2) is ``set_global``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from migemu.emulator.cmdline.sizes import SizeError, parse_c_uint64, parse_size
from migemu.qapi.errors import QMPError

TARGET_PAGE_SIZE = 4096  # x86
DOWNTIME_LIMIT_MAX_MS = 2000 * 1000

# MigrationParameters in QEMU 7.2 member order, with the defaults a fresh QEMU reports.
# block-bitmap-mapping has no default: it is absent until set.
_DEFAULTS: dict[str, Any] = {
    "announce-initial": 50,
    "announce-max": 550,
    "announce-rounds": 5,
    "announce-step": 100,
    "compress-level": 1,
    "compress-threads": 8,
    "compress-wait-thread": True,
    "decompress-threads": 2,
    "throttle-trigger-threshold": 50,
    "cpu-throttle-initial": 20,
    "cpu-throttle-increment": 10,
    "cpu-throttle-tailslow": False,
    "tls-creds": "",
    "tls-hostname": "",
    "tls-authz": "",
    "max-bandwidth": 134217728,
    "downtime-limit": 300,
    "x-checkpoint-delay": 20000,
    "block-incremental": False,
    "multifd-channels": 2,
    "xbzrle-cache-size": 67108864,
    "max-postcopy-bandwidth": 0,
    "max-cpu-throttle": 99,
    "multifd-compression": "none",
    "multifd-zlib-level": 1,
    "multifd-zstd-level": 1,
}
PARAMETER_NAMES: tuple[str, ...] = (*_DEFAULTS, "block-bitmap-mapping")

# Accepted over QMP but dropped by 7.2's migrate_params_test_apply/migrate_params_apply.
IGNORED_OVER_QMP: frozenset[str] = frozenset({"multifd-zlib-level", "multifd-zstd-level"})
_TLS = ("tls-creds", "tls-hostname", "tls-authz")


def default_parameters() -> dict[str, Any]:
    """A fresh QEMU 7.2's parameters (wire names, schema order)."""
    return dict(_DEFAULTS)


def _ordered(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: params[name] for name in PARAMETER_NAMES if name in params}


# --- migrate_params_check -------------------------------------------------------------------


def _between(field: str, low: int, high: int) -> str:
    return f"Parameter '{field}' expects a value between {low} and {high}"


def _in_range(field: str, low: str | int, high: str | int) -> str:
    return f"Parameter '{field}' expects an integer in the range of {low} to {high}"


def _well_formed_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name) is not None


def _bitmap_mapping_error(mapping: list[dict[str, Any]]) -> str | None:
    node_names: set[str] = set()
    node_aliases: set[str] = set()
    for node in mapping:
        alias = node["alias"]
        if len(alias.encode()) > 255:
            return f"The node alias '{alias}' is longer than 255 bytes"
        if not _well_formed_id(alias):
            return f"The node alias '{alias}' is not well-formed"
        if node["node-name"] in node_names:
            return f"The node name '{node['node-name']}' is mapped twice"
        if alias in node_aliases:
            return f"The node alias '{alias}' is used twice"
        node_names.add(node["node-name"])
        node_aliases.add(alias)
        names: set[str] = set()
        aliases: set[str] = set()
        for bitmap in node["bitmaps"]:
            if len(bitmap["alias"].encode()) > 255:
                return f"The bitmap alias '{bitmap['alias']}' is longer than 255 bytes"
            if bitmap["name"] in names:
                return f"The bitmap '{node['node-name']}'/'{bitmap['name']}' is mapped twice"
            if bitmap["alias"] in aliases:
                return f"The bitmap alias '{alias}'/'{bitmap['alias']}' is used twice"
            names.add(bitmap["name"])
            aliases.add(bitmap["alias"])
    return None


def _first_error(p: Mapping[str, Any], zero_copy_send: bool) -> str | None:
    """QEMU 7.2's migrate_params_check on a complete parameter set, in its order."""
    if p["compress-level"] > 9:
        return _between("compress_level", 0, 9)
    if p["compress-threads"] < 1:
        return _between("compress_threads", 1, 255)
    if p["decompress-threads"] < 1:
        return _between("decompress_threads", 1, 255)
    if not 1 <= p["throttle-trigger-threshold"] <= 100:
        return _in_range("throttle_trigger_threshold", 1, 100)
    if not 1 <= p["cpu-throttle-initial"] <= 99:
        return _in_range("cpu_throttle_initial", 1, 99)
    if not 1 <= p["cpu-throttle-increment"] <= 99:
        return _in_range("cpu_throttle_increment", 1, 99)
    # max_bandwidth > SIZE_MAX cannot happen on a 64-bit host.
    if p["downtime-limit"] > DOWNTIME_LIMIT_MAX_MS:
        # The macro is stringified literally in QEMU's message.
        return "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
    if p["multifd-channels"] < 1:
        return _between("multifd_channels", 1, 255)
    if p["multifd-zlib-level"] > 9:
        return _between("multifd_zlib_level", 0, 9)
    if p["multifd-zstd-level"] > 20:
        return _between("multifd_zstd_level", 0, 20)
    size = p["xbzrle-cache-size"]
    if size < TARGET_PAGE_SIZE or size & (size - 1):
        return (
            "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"
        )
    if not p["cpu-throttle-initial"] <= p["max-cpu-throttle"] <= 99:
        return _in_range("max_cpu_throttle", "cpu_throttle_initial", 99)
    if p["announce-initial"] > 100000:
        return _between("announce_initial", 0, 100000)
    if p["announce-max"] > 100000:
        return _between("announce_max", 0, 100000)
    if p["announce-rounds"] > 1000:
        return _between("announce_rounds", 0, 1000)
    if not 1 <= p["announce-step"] <= 10000:
        return _between("announce_step", 0, 10000)  # says 0, rejects 0: as QEMU
    if "block-bitmap-mapping" in p:
        err = _bitmap_mapping_error(p["block-bitmap-mapping"])
        if err is not None:
            return f"Invalid mapping given for block-bitmap-mapping: {err}"
    if zero_copy_send and (p["multifd-compression"] != "none" or p["tls-creds"]):
        return "Zero copy only available for non-compressed non-TLS multifd migration"
    return None


def check_parameters(params: Mapping[str, Any], *, zero_copy_send: bool = False) -> None:
    """Raise ``QMPError`` with QEMU's message if the complete set ``params`` is invalid."""
    err = _first_error(params, zero_copy_send)
    if err is not None:
        raise QMPError(err)


# --- migrate-set-parameters / query-migrate-parameters --------------------------------------


def _bitmap_mapping_in_schema_order(mapping: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for node in mapping:
        bitmaps = []
        for b in node["bitmaps"]:
            entry: dict[str, Any] = {"name": b["name"], "alias": b["alias"]}
            if "transform" in b:
                t = b["transform"]
                entry["transform"] = {"persistent": t["persistent"]} if "persistent" in t else {}
            bitmaps.append(entry)
        out.append({"node-name": node["node-name"], "alias": node["alias"], "bitmaps": bitmaps})
    return out


def set_parameters(
    current: Mapping[str, Any], request: Mapping[str, Any], *, zero_copy_send: bool = False
) -> dict[str, Any]:
    """``migrate-set-parameters``: the new parameter set, or ``QMPError`` and no change.

    ``request`` holds validated arguments (``migemu.qapi.validate``); ``zero_copy_send`` is
    the current state of that capability, which forbids compression and TLS.
    """
    updates: dict[str, Any] = {}
    for name, value in request.items():
        if name in IGNORED_OVER_QMP:
            continue
        if name in _TLS and value is None:
            value = ""
        if name == "block-bitmap-mapping":
            value = _bitmap_mapping_in_schema_order(value)
        updates[name] = value
    merged = {**current, **updates}
    check_parameters(merged, zero_copy_send=zero_copy_send)
    return _ordered(copy.deepcopy(merged))


def query_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``query-migrate-parameters`` result, in schema member order."""
    out = _ordered(copy.deepcopy(dict(params)))
    for name in _TLS:
        out[name] = out.get(name) or ""
    return out


# --- -global migration.PROP=VALUE -----------------------------------------------------------


@dataclass(frozen=True)
class MigrationProperty:
    """A property of QEMU 7.2's ``migration`` object, settable with ``-global``."""

    name: str  # the -global name
    type: str  # uint8 / uint32 / uint64 / size / bool / str / MultiFDCompression
    kind: str  # "parameter", "capability" or "state" (a MigrationState field)
    target: str  # the parameter or capability wire name, or the property name


def _prop(name: str, type_: str, kind: str, target: str | None = None) -> MigrationProperty:
    return MigrationProperty(name, type_, kind, target or name)


MIGRATION_PROPERTIES: dict[str, MigrationProperty] = {
    p.name: p
    for p in [
        _prop("store-global-state", "bool", "state"),
        _prop("send-configuration", "bool", "state"),
        _prop("send-section-footer", "bool", "state"),
        _prop("decompress-error-check", "bool", "state"),
        _prop("x-clear-bitmap-shift", "uint8", "state"),
        _prop("x-postcopy-preempt-break-huge", "bool", "state"),
        _prop("x-compress-level", "uint8", "parameter", "compress-level"),
        _prop("x-compress-threads", "uint8", "parameter", "compress-threads"),
        _prop("x-compress-wait-thread", "bool", "parameter", "compress-wait-thread"),
        _prop("x-decompress-threads", "uint8", "parameter", "decompress-threads"),
        _prop("x-throttle-trigger-threshold", "uint8", "parameter", "throttle-trigger-threshold"),
        _prop("x-cpu-throttle-initial", "uint8", "parameter", "cpu-throttle-initial"),
        _prop("x-cpu-throttle-increment", "uint8", "parameter", "cpu-throttle-increment"),
        _prop("x-cpu-throttle-tailslow", "bool", "parameter", "cpu-throttle-tailslow"),
        _prop("x-max-bandwidth", "size", "parameter", "max-bandwidth"),
        _prop("x-downtime-limit", "uint64", "parameter", "downtime-limit"),
        _prop("x-checkpoint-delay", "uint32", "parameter"),
        _prop("multifd-channels", "uint8", "parameter"),
        _prop("multifd-compression", "MultiFDCompression", "parameter"),
        _prop("multifd-zlib-level", "uint8", "parameter"),
        _prop("multifd-zstd-level", "uint8", "parameter"),
        _prop("xbzrle-cache-size", "size", "parameter"),
        _prop("max-postcopy-bandwidth", "size", "parameter"),
        _prop("max-cpu-throttle", "uint8", "parameter"),
        _prop("announce-initial", "size", "parameter"),
        _prop("announce-max", "size", "parameter"),
        _prop("announce-rounds", "size", "parameter"),
        _prop("announce-step", "size", "parameter"),
        _prop("tls-creds", "str", "parameter"),
        _prop("tls-hostname", "str", "parameter"),
        _prop("tls-authz", "str", "parameter"),
        # Capabilities (7.2 has no -global switch for the others).
        _prop("x-xbzrle", "bool", "capability", "xbzrle"),
        _prop("x-rdma-pin-all", "bool", "capability", "rdma-pin-all"),
        _prop("x-auto-converge", "bool", "capability", "auto-converge"),
        _prop("x-zero-blocks", "bool", "capability", "zero-blocks"),
        _prop("x-compress", "bool", "capability", "compress"),
        _prop("x-events", "bool", "capability", "events"),
        _prop("x-postcopy-ram", "bool", "capability", "postcopy-ram"),
        _prop("x-postcopy-preempt", "bool", "capability", "postcopy-preempt"),
        _prop("x-colo", "bool", "capability", "x-colo"),
        _prop("x-release-ram", "bool", "capability", "release-ram"),
        _prop("x-block", "bool", "capability", "block"),
        _prop("x-return-path", "bool", "capability", "return-path"),
        _prop("x-multifd", "bool", "capability", "multifd"),
        _prop("x-background-snapshot", "bool", "capability", "background-snapshot"),
        _prop("x-zero-copy-send", "bool", "capability", "zero-copy-send"),
    ]
}

SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)
_UINT_BITS = {"uint8": 8, "uint32": 32, "uint64": 64}


def _parse_size(text: str) -> int | None:
    """qemu_strtosz: None if malformed; ``_OutOfRange`` if it does not fit 64 bits. (QEMU
    also warns that a suffix on a hex number is deprecated; migemu accepts it silently.)"""
    try:
        return parse_size(text)[0]
    except SizeError as err:
        if err.out_of_range:
            raise _OutOfRange from err
        return None


class _OutOfRange(Exception):
    pass


def parse_global_value(prop: MigrationProperty, text: str) -> Any:
    """The value of ``-global migration.<prop>=<text>``, or ``QMPError`` with QEMU's words."""
    name = prop.name
    if prop.type == "bool":
        if text in ("on", "yes", "true", "y"):
            return True
        if text in ("off", "no", "false", "n"):
            return False
        raise QMPError(f"Parameter '{name}' expects 'on' or 'off'")
    if prop.type == "str":
        return text
    if prop.type == "MultiFDCompression":
        if text in ("none", "zlib", "zstd"):
            return text
        raise QMPError(f"Parameter '{name}' does not accept value '{text}'")
    if prop.type == "size":
        try:
            value = _parse_size(text)
        except _OutOfRange:
            raise QMPError(f"Value '{text}' is out of range for parameter '{name}'") from None
        if value is None:
            raise QMPError(
                f"Parameter '{name}' expects a non-negative number below 2^64\n{SIZE_HINT}"
            )
        return value
    value = parse_c_uint64(text)
    if value is None:
        raise QMPError(f"Parameter '{name}' expects uint64")
    if value >= 2 ** _UINT_BITS[prop.type]:
        raise QMPError(f"Parameter '{name}' expects {prop.type}_t")
    return value


def lookup_global(prop: str) -> MigrationProperty:
    """The ``migration`` property named ``prop``, or QEMU's "not found" error."""
    try:
        return MIGRATION_PROPERTIES[prop]
    except KeyError:
        raise QMPError(f"Property 'migration.{prop}' not found") from None


def set_global(current: Mapping[str, Any], prop: str, text: str) -> dict[str, Any]:
    """Apply ``-global migration.<prop>=<text>`` to a parameter set (no range check yet).

    QEMU checks the whole set once all globals are applied (``check_parameters``, message
    printed as is); a parse error is reported as ``can't apply global migration.P=V: ...``.
    Capability and MigrationState properties are not parameters: see ``lookup_global`` and
    ``capabilities.set_global``.
    """
    try:
        p = lookup_global(prop)
        if p.kind != "parameter":
            raise ValueError(f"migration.{prop} is a {p.kind} property, not a parameter")
        value = parse_global_value(p, text)
    except QMPError as err:
        raise QMPError(f"can't apply global migration.{prop}={text}: {err.desc}") from err
    return _ordered({**current, p.target: value})
