"""Command-argument validation with QEMU 7.2's exact error texts (qapi layer).

``validate(command, arguments)`` applies the JSON Schema generated from our QAPI definitions
(``jsonschema_gen.py``) with the ``jsonschema`` library, then picks the one error QEMU's
QObject input visitor would report: members are visited in schema order, the first error
wins, and unknown members are checked only after all known members of that object parsed.
When several members are unknown, QEMU names the first one its GLib hash table yields, so
that order is reproduced here (QDict bucket order feeding a GHashTable of size 8+).
On success the arguments come back with negative integers for unsigned members wrapped to
uint64, as QEMU stores them (``max-bandwidth: -1`` becomes 18446744073709551615).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from migemu.qapi.errors import CommandNotFound, QMPError

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
from migemu.qapi.jsonschema_gen import command_arguments_schema, json_kind
from migemu.qapi.schema import (
    AlternateType,
    ArrayType,
    BuiltinType,
    ObjectType,
    QAPIType,
    Schema,
    command_allows_oob,
    command_names,
    is_known_command,
    load_schema,
)

__all__ = [
    "command_allows_oob",
    "command_names",
    "first_unexpected_key",
    "is_known_command",
    "qdict_order",
    "validate",
]

_UNSIGNED = frozenset({"uint8", "uint16", "uint32", "uint64", "size"})


def _is_integer(_checker: Any, instance: Any) -> bool:
    # QEMU's JSON parser turns 4.0 (and integers beyond uint64) into doubles, which no
    # integer member accepts; jsonschema would call 4.0 an integer.
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _validator_class() -> Any:
    # jsonschema is imported on the first validation, not at start-up (~60 ms of imports).
    import jsonschema

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
    )


@functools.cache
def _validator(command: str) -> Any:
    return _validator_class()(command_arguments_schema(load_schema(), command))


def command_not_found(command: str) -> CommandNotFound:
    return CommandNotFound(f"The command {command} has not been found")


def validate(command: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``arguments`` of ``command``; return them (normalized) or raise ``QMPError``.

    ``arguments`` is the request's ``arguments`` object (``None`` when absent). An unknown
    command raises ``CommandNotFound``.
    """
    schema = load_schema()
    cmd = schema.commands.get(command)
    if cmd is None:
        raise command_not_found(command)
    args: dict[str, Any] = {} if arguments is None else arguments
    errors = list(_validator(command).iter_errors(args))
    if errors:
        first = min(errors, key=lambda e: _order_key(schema, cmd.arg_type, args, e))
        raise QMPError(_message(first))
    return _normalize(schema, cmd.arg_type, args)


# --- which error QEMU reports ---------------------------------------------------------------

# Within one value: the type check happens before any narrower range or enum check.
_LOCAL_RANK = {"type": 0, "value": 0, "alternate": 0, "range": 1, "enum": 1}


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "null": (type(None),),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "array": (list,),
    "object": (dict,),
}


def _is_json_kind(kind: str, value: Any) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, _JSON_TYPES[kind])


def _resolve(schema: Schema, type_name: str, value: Any) -> QAPIType:
    """The type a value is visited as: an alternate resolves to the branch its JSON type picks."""
    t = schema.lookup(type_name)
    if isinstance(t, AlternateType):
        for _, branch in t.branches:
            kind = json_kind(schema, branch)
            if kind is not None and _is_json_kind(kind, value):
                return schema.lookup(branch)
    return t


def _order_key(schema: Schema, root: str, instance: Any, err: ValidationError) -> tuple[int, ...]:
    key: list[int] = []
    type_name = root
    value = instance
    for step in err.absolute_path:
        t = _resolve(schema, type_name, value)
        if isinstance(t, ObjectType):
            names = [m.name for m in t.members]
            if step in names:
                key.append(names.index(step))
                type_name = t.members[names.index(step)].type
            else:  # a union variant member: after the base members
                key.append(len(names))
                type_name = "any"
        elif isinstance(t, ArrayType):
            key.append(int(step))
            type_name = t.element_type
        value = value[step]
    ann = err.schema.get("x-qapi", {}) if isinstance(err.schema, dict) else {}
    kind = ann.get("kind", "type")
    t = _resolve(schema, type_name, value)
    if kind == "missing" and isinstance(t, ObjectType):
        key.append([m.name for m in t.members].index(ann["member"]))
    elif kind == "unexpected" and isinstance(t, ObjectType):
        first = first_unexpected_key(list(value), [m.name for m in t.members])
        key += [len(t.members), 0 if err.instance == first else 1]
    else:
        key += [-1, _LOCAL_RANK.get(kind, 0)]
    return tuple(key)


def _full_name(path: Sequence[str | int], last: str | None = None) -> str:
    out = ""
    for step in [*path, *([last] if last is not None else [])]:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else step
    return out


def _message(err: ValidationError) -> str:
    ann = err.schema.get("x-qapi", {}) if isinstance(err.schema, dict) else {}
    kind = ann.get("kind", "type")
    path = list(err.absolute_path)
    full = _full_name(path)
    # Range, enum and alternate errors name only the member itself ("null" in a list).
    name = path[-1] if path and isinstance(path[-1], str) else "null"
    if kind == "missing":
        return f"Parameter '{_full_name(path, ann['member'])}' is missing"
    if kind == "unexpected":
        return f"Parameter '{_full_name(path, err.instance)}' is unexpected"
    if kind == "value":
        return f"Parameter '{full}' expects {ann['expected']}"
    if kind == "range":
        return f"Parameter '{name}' expects {ann['expected']}"
    if kind == "enum":
        return f"Parameter '{name}' does not accept value '{err.instance}'"
    if kind == "alternate":
        return f"Invalid parameter type for '{name}', expected: {ann['expected']}"
    return f"Invalid parameter type for '{full}', expected: {ann.get('expected', 'object')}"


# --- normalization --------------------------------------------------------------------------


def _normalize(schema: Schema, type_name: str, value: Any) -> Any:
    t = _resolve(schema, type_name, value)
    if isinstance(t, BuiltinType):
        if t.name in _UNSIGNED and isinstance(value, int) and value < 0:
            return value + 2**64
        return value
    if isinstance(t, ArrayType):
        return [_normalize(schema, t.element_type, v) for v in value]
    if isinstance(t, ObjectType) and isinstance(value, dict):
        types = {m.name: m.type for m in t.members}
        return {k: _normalize(schema, types.get(k, "any"), v) for k, v in value.items()}
    return value


# --- GLib hash-table order of unknown members -----------------------------------------------
# QEMU puts the argument names into a GHashTable (g_str_hash, quadratic probing, initial
# size 8, index (hash * 11 mod 2**32) % prime), inserting them in QDict iteration order,
# removes each member it visits and reports the first name left in slot order. Checked
# against QEMU 7.2 with random sets of up to 35 names, so the in-place resize matches too.

_QDICT_BUCKETS = 512
_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749)
_UNUSED, _TOMBSTONE = 0, 1


def _qdict_hash(key: bytes) -> int:
    h = (0x238F13AF * len(key)) & 0xFFFFFFFF
    for i, b in enumerate(key):
        h = (h + (b << ((i * 5) % 24))) & 0xFFFFFFFF
    return ((1103515243 * h + 12345) & 0xFFFFFFFF) % _QDICT_BUCKETS


def qdict_order(keys: Sequence[str]) -> list[str]:
    """The order QEMU's QDict iterates ``keys`` inserted in this order."""
    indexed = list(enumerate(keys))
    indexed.sort(key=lambda ik: (_qdict_hash(ik[1].encode()), -ik[0]))
    return [k for _, k in indexed]


def _g_str_hash(key: bytes) -> int:
    h = 5381
    for b in key:
        signed = b - 256 if b >= 128 else b  # g_str_hash reads signed chars
        h = (h * 33 + signed) & 0xFFFFFFFF
    return h


class _GHashSet:
    """Just enough of GLib's GHashTable to know its iteration order."""

    def __init__(self) -> None:
        self._set_shift(3)
        self.hashes = [_UNUSED] * self.size
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = 0
        self.noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _lookup(self, key: str) -> tuple[int, int]:
        h = _g_str_hash(key.encode())
        if h <= 1:
            h = 2
        index = ((h * 11) & 0xFFFFFFFF) % self.mod
        step = 0
        tombstone = -1
        while self.hashes[index] != _UNUSED:
            if self.hashes[index] == h and self.keys[index] == key:
                return index, h
            if self.hashes[index] == _TOMBSTONE and tombstone < 0:
                tombstone = index
            step += 1
            index = (index + step) & self.mask
        return (tombstone if tombstone >= 0 else index), h

    def insert(self, key: str) -> None:
        index, h = self._lookup(key)
        if self.hashes[index] >= 2:
            return
        was_unused = self.hashes[index] == _UNUSED
        self.hashes[index] = h
        self.keys[index] = key
        self.nnodes += 1
        if was_unused:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        index, _ = self._lookup(key)
        if self.hashes[index] < 2:
            return
        self.hashes[index] = _TOMBSTONE
        self.keys[index] = None
        self.nnodes -= 1
        self._maybe_resize()

    def _maybe_resize(self) -> None:
        if (self.size > self.nnodes * 4 and self.size > 8) or (
            self.size <= self.noccupied + self.noccupied // 16
        ):
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        self.noccupied = self.nnodes
        shift = max(int(self.nnodes * 1.333).bit_length(), 3)
        self._set_shift(shift)
        if self.size > old_size:
            self.hashes += [_UNUSED] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        moved = [False] * max(self.size, old_size)
        # GLib rehashes in place, evicting whatever sits in a node's new slot.
        for i in range(old_size):
            node_hash = self.hashes[i]
            if node_hash < 2:
                self.hashes[i] = _UNUSED
                continue
            if moved[i]:
                continue
            self.hashes[i] = _UNUSED
            key = self.keys[i]
            self.keys[i] = None
            while True:
                index = ((node_hash * 11) & 0xFFFFFFFF) % self.mod
                step = 0
                while moved[index]:
                    step += 1
                    index = (index + step) & self.mask
                moved[index] = True
                replaced_hash = self.hashes[index]
                replaced_key = self.keys[index]
                self.hashes[index] = node_hash
                self.keys[index] = key
                if replaced_hash < 2:
                    break
                node_hash, key = replaced_hash, replaced_key
        if self.size < old_size:
            del self.hashes[self.size :]
            del self.keys[self.size :]

    def first(self) -> str | None:
        for h, k in zip(self.hashes, self.keys, strict=True):
            if h >= 2:
                return k
        return None


def first_unexpected_key(keys: Sequence[str], members: Sequence[str]) -> str | None:
    """The unknown member QEMU names for an object with ``keys`` (input order).

    ``members`` are the type's members in schema order, the order QEMU visits (removes) them.
    """
    table = _GHashSet()
    for k in qdict_order(keys):
        table.insert(k)
    present = set(keys)
    for m in members:
        if m in present:
            table.remove(m)
    return table.first()
