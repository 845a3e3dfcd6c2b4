"""JSON Schema (draft 2020-12) generated from the QAPI definitions (qapi layer).

Each QAPI object type becomes a ``$defs`` entry; scalar types are inlined where used.
Every subschema whose keywords can fail carries an ``x-qapi`` annotation naming the QEMU
input-visitor error it stands for, so ``validate.py`` can turn a ``jsonschema`` error back
into QEMU 7.2's exact text:

- ``type``: ``Invalid parameter type for '<path>', expected: <expected>``
- ``value``: ``Parameter '<path>' expects <expected>`` (not a number, or outside int64/uint64)
- ``range``: ``Parameter '<name>' expects <expected>`` (a narrower integer type)
- ``enum``: ``Parameter '<name>' does not accept value '<v>'``
- ``alternate``: ``Invalid parameter type for '<name>', expected: <alternate name>``
- ``missing`` / ``unexpected``: ``Parameter '<path>' is missing`` / ``... is unexpected``

JSON-Schema ``integer`` must exclude floats such as ``4.0`` (QEMU's parser keeps them
doubles); ``validate.py`` applies the schema with such a type checker.
"""

from __future__ import annotations

from typing import Any

from migemu.qapi.schema import (
    AlternateType,
    ArrayType,
    BuiltinType,
    EnumType,
    ObjectType,
    Schema,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

# Narrow integer types: (low, high) after the int64/uint64 visit, and QEMU's C type name.
_SIGNED = {"int8": 8, "int16": 16, "int32": 32}
_UNSIGNED = {"uint8": 8, "uint16": 16, "uint32": 32}

# What JSON type each kind of QAPI type accepts (for alternate branch selection).
_JSON_KIND = {
    "str": "string",
    "null": "null",
    "bool": "boolean",
    "number": "number",
}


def json_kind(schema: Schema, type_name: str) -> str | None:
    """The JSON-Schema type that selects ``type_name`` as an alternate branch."""
    t = schema.lookup(type_name)
    if isinstance(t, BuiltinType):
        if t.json_type == "int":
            return "integer"
        return _JSON_KIND.get(t.name)
    if isinstance(t, EnumType):
        return "string"
    if isinstance(t, ArrayType):
        return "array"
    if isinstance(t, ObjectType):
        return "object"
    return None


def _ref(type_name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{type_name}"}


def _type_schema(schema: Schema, type_name: str) -> dict[str, Any]:
    """Where a type is used: objects by reference (they may nest), anything else inline."""
    t = schema.lookup(type_name)
    if isinstance(t, ArrayType):
        return {
            "type": "array",
            "items": _type_schema(schema, t.element_type),
            "x-qapi": {"kind": "type", "expected": "array"},
        }
    if isinstance(t, ObjectType):
        return _ref(type_name)
    # Inline scalars: a $ref costs a registry lookup on every validation.
    return type_definition(schema, type_name)


def _builtin(t: BuiltinType) -> dict[str, Any]:
    name = t.name
    if name in ("int", "int64") or name in _SIGNED:
        base = {
            "type": "integer",
            "minimum": INT64_MIN,
            "maximum": INT64_MAX,
            "x-qapi": {"kind": "type", "expected": "integer"},
        }
        if name in _SIGNED:
            bits = _SIGNED[name]
            narrow = {
                "minimum": -(2 ** (bits - 1)),
                "maximum": 2 ** (bits - 1) - 1,
                "x-qapi": {"kind": "range", "expected": f"{name}_t"},
            }
            return {"allOf": [base, narrow]}
        return base
    if name in ("uint64", "size") or name in _UNSIGNED:
        # QEMU accepts negative integers for unsigned members and wraps them to uint64.
        base = {
            "type": "integer",
            "minimum": INT64_MIN,
            "maximum": UINT64_MAX,
            "x-qapi": {"kind": "value", "expected": "uint64"},
        }
        if name in _UNSIGNED:
            narrow = {
                "minimum": 0,
                "maximum": 2 ** _UNSIGNED[name] - 1,
                "x-qapi": {"kind": "range", "expected": f"{name}_t"},
            }
            return {"allOf": [base, narrow]}
        return base
    if name == "any":
        return {}
    kind = {"str": "string", "bool": "boolean", "number": "number", "null": "null"}[name]
    return {"type": kind, "x-qapi": {"kind": "type", "expected": kind}}


def _object(schema: Schema, t: ObjectType) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "x-qapi": {"kind": "type", "expected": "object"},
        "properties": {m.name: _type_schema(schema, m.type) for m in t.members},
    }
    required = [
        {"required": [m.name], "x-qapi": {"kind": "missing", "member": m.name}}
        for m in t.members
        if not m.optional
    ]
    if t.tag is None:
        out["propertyNames"] = {
            "enum": [m.name for m in t.members],
            "x-qapi": {"kind": "unexpected"},
        }
    else:
        # Flat unions only appear in command *results*; their variant members are described
        # for completeness, without QEMU's per-variant unexpected-member check.
        for case, variant in t.variants:
            vt = schema.lookup(variant)
            assert isinstance(vt, ObjectType)
            required.append(
                {
                    "if": {"properties": {t.tag: {"const": case}}, "required": [t.tag]},
                    "then": {
                        "properties": {m.name: _type_schema(schema, m.type) for m in vt.members}
                    },
                }
            )
    if required:
        out["allOf"] = required
    return out


def _alternate(schema: Schema, t: AlternateType) -> dict[str, Any]:
    kinds = []
    branches = []
    for _, branch in t.branches:
        kind = json_kind(schema, branch)
        if kind is None:
            raise ValueError(f"alternate {t.name}: unsupported branch {branch}")
        kinds.append(kind)
        branches.append({"if": {"type": kind}, "then": _type_schema(schema, branch)})
    return {
        "type": kinds,
        "x-qapi": {"kind": "alternate", "expected": t.name},
        "allOf": branches,
    }


def type_definition(schema: Schema, type_name: str) -> dict[str, Any]:
    """The ``$defs`` entry for one named QAPI type."""
    t = schema.lookup(type_name)
    if isinstance(t, BuiltinType):
        return _builtin(t)
    if isinstance(t, EnumType):
        return {
            "allOf": [
                {"type": "string", "x-qapi": {"kind": "type", "expected": "string"}},
                {"enum": list(t.values), "x-qapi": {"kind": "enum"}},
            ]
        }
    if isinstance(t, ObjectType):
        return _object(schema, t)
    if isinstance(t, AlternateType):
        return _alternate(schema, t)
    return _type_schema(schema, type_name)


def _named_types_used(schema: Schema, root: str) -> list[str]:
    seen: list[str] = []
    work = [root]
    while work:
        name = work.pop()
        if name.startswith("["):
            work.append(name[1:-1])
            continue
        if name in seen:
            continue
        seen.append(name)
        t = schema.lookup(name)
        if isinstance(t, ObjectType):
            work.extend(m.type for m in t.members)
            work.extend(v for _, v in t.variants)
        elif isinstance(t, AlternateType):
            work.extend(b for _, b in t.branches)
    return seen


def json_schema_for_type(schema: Schema, type_name: str) -> dict[str, Any]:
    """A self-contained draft 2020-12 JSON Schema for values of ``type_name``."""
    defs = {
        n: type_definition(schema, n)
        for n in _named_types_used(schema, type_name)
        if isinstance(schema.lookup(n), ObjectType)
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        **_type_schema(schema, type_name),
    }


def command_arguments_schema(schema: Schema, command: str) -> dict[str, Any]:
    """The JSON Schema for the ``arguments`` of ``command``."""
    return json_schema_for_type(schema, schema.commands[command].arg_type)
