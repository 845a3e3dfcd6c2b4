"""The QAPI schema: our definitions of everything migemu implements, loaded once (qapi layer).

``schema/*.json`` holds QAPI-style definitions (enum, struct, union, alternate, command,
event), written for migemu in QEMU 7.2's member order. This module parses them into small
frozen dataclasses and resolves names, so validation (``validate.py``), JSON-Schema
generation (``jsonschema_gen.py``) and introspection (``introspect.py``) all read one model.
Array types are spelled ``"[Elem]"``; a command's inline ``data`` becomes an implicit struct
named ``q_obj_<command>-arg`` as in QEMU. Adding a migemu-only command means adding one
``{"command": "x-migemu-..."}`` definition to ``schema/migemu.json``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

# Modules in QEMU's include order (qapi-schema.json); it fixes the order of entities.
MODULES: tuple[str, ...] = (
    "sockets",
    "run-state",
    "block",
    "char",
    "tpm",
    "migration",
    "control",
    "introspect",
    "qom",
    "tls",  # crypto/authz/qom definitions of the TLS objects, where QEMU includes qom
    "qdev",
    "machine",
    "machine-target",
    "misc",
    "fds",  # getfd..query-fdsets: the end of QEMU's misc.json, kept in a module of its own
    "misc-target",
    "migemu",
)

# Built-in types and the JSON type introspection reports for them.
BUILTIN_JSON_TYPES: dict[str, str] = {
    "str": "string",
    "number": "number",
    "int": "int",
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "int",
    "uint8": "int",
    "uint16": "int",
    "uint32": "int",
    "uint64": "int",
    "size": "int",
    "bool": "boolean",
    "null": "null",
    "any": "value",
}

EMPTY_OBJECT = "q_empty"


class SchemaError(Exception):
    """A definition in ``schema/*.json`` is malformed (a bug in migemu, not a QMP error)."""


@dataclass(frozen=True)
class Member:
    name: str
    type: str
    optional: bool = False
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnumMember:
    name: str
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltinType:
    name: str
    json_type: str


@dataclass(frozen=True)
class EnumType:
    name: str
    members: tuple[EnumMember, ...]

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)


@dataclass(frozen=True)
class ArrayType:
    name: str
    element_type: str


@dataclass(frozen=True)
class ObjectType:
    """A struct, or a flat union when ``tag`` is set (``variants``: case -> struct name)."""

    name: str
    members: tuple[Member, ...]
    tag: str | None = None
    variants: tuple[tuple[str, str], ...] = ()
    features: tuple[str, ...] = ()

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None


@dataclass(frozen=True)
class AlternateType:
    name: str
    branches: tuple[tuple[str, str], ...]  # (branch name, type name)


QAPIType = BuiltinType | EnumType | ArrayType | ObjectType | AlternateType


@dataclass(frozen=True)
class Command:
    name: str
    arg_type: str  # EMPTY_OBJECT when the command takes no arguments
    ret_type: str | None
    allow_oob: bool = False
    allow_preconfig: bool = False
    boxed: bool = False
    features: tuple[str, ...] = ()
    module: str = ""


@dataclass(frozen=True)
class Event:
    name: str
    arg_type: str
    features: tuple[str, ...] = ()
    module: str = ""


@dataclass(frozen=True)
class Schema:
    types: dict[str, QAPIType]
    commands: dict[str, Command]
    events: dict[str, Event]
    entities: tuple[Command | Event, ...]  # commands and events in definition order

    def lookup(self, name: str) -> QAPIType:
        if name.startswith("[") and name.endswith("]"):
            return ArrayType(name, name[1:-1])
        try:
            return self.types[name]
        except KeyError:
            raise SchemaError(f"unknown type {name!r}") from None


def _type_ref(spec: Any, where: str) -> str:
    """A member type: a name, or a one-element list meaning an array of it."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, list) and len(spec) == 1 and isinstance(spec[0], str):
        return f"[{spec[0]}]"
    raise SchemaError(f"{where}: bad type {spec!r}")


def _members(data: dict[str, Any], where: str) -> list[Member]:
    out = []
    for key, spec in data.items():
        optional = key.startswith("*")
        name = key[1:] if optional else key
        features: tuple[str, ...] = ()
        if isinstance(spec, dict):
            features = tuple(spec.get("features", ()))
            spec = spec["type"]
        out.append(Member(name, _type_ref(spec, f"{where}.{name}"), optional, features))
    return out


class _Loader:
    def __init__(self) -> None:
        self.types: dict[str, QAPIType] = {
            name: BuiltinType(name, jt) for name, jt in BUILTIN_JSON_TYPES.items()
        }
        self.types[EMPTY_OBJECT] = ObjectType(EMPTY_OBJECT, ())
        self.commands: dict[str, Command] = {}
        self.events: dict[str, Event] = {}
        self.entities: list[Command | Event] = []
        self._bases: dict[str, str] = {}

    def _add_type(self, t: QAPIType) -> None:
        if t.name in self.types:
            raise SchemaError(f"duplicate type {t.name!r}")
        self.types[t.name] = t

    def _arg_type(self, owner: str, data: Any, boxed: bool = False) -> str:
        if data is None:
            return EMPTY_OBJECT
        if isinstance(data, str):
            if not boxed:
                raise SchemaError(f"{owner}: a named 'data' type needs 'boxed'")
            return data
        implicit = f"q_obj_{owner}-arg"
        self._add_type(ObjectType(implicit, tuple(_members(data, owner))))
        return implicit

    def add(self, expr: dict[str, Any], module: str) -> None:
        features = tuple(expr.get("features", ()))
        if "enum" in expr:
            members = tuple(
                EnumMember(m) if isinstance(m, str) else EnumMember(m["name"], tuple(m["features"]))
                for m in expr["data"]
            )
            self._add_type(EnumType(expr["enum"], members))
        elif "struct" in expr:
            name = expr["struct"]
            if "base" in expr:
                self._bases[name] = expr["base"]
            self._add_type(ObjectType(name, tuple(_members(expr["data"], name)), features=features))
        elif "union" in expr:
            name = expr["union"]
            base = expr["base"]
            if isinstance(base, dict):
                members = tuple(_members(base, name))
            else:
                self._bases[name] = base
                members = ()
            variants = tuple((case, t) for case, t in expr["data"].items())
            self._add_type(ObjectType(name, members, expr["discriminator"], variants, features))
        elif "alternate" in expr:
            branches = tuple((k, _type_ref(v, expr["alternate"])) for k, v in expr["data"].items())
            self._add_type(AlternateType(expr["alternate"], branches))
        elif "command" in expr:
            name = expr["command"]
            if name in self.commands:
                raise SchemaError(f"duplicate command {name!r}")
            boxed = bool(expr.get("boxed", False))
            returns = expr.get("returns")
            cmd = Command(
                name,
                self._arg_type(name, expr.get("data"), boxed),
                None if returns is None else _type_ref(returns, name),
                bool(expr.get("allow-oob", False)),
                bool(expr.get("allow-preconfig", False)),
                boxed,
                features,
                module,
            )
            self.commands[name] = cmd
            self.entities.append(cmd)
        elif "event" in expr:
            name = expr["event"]
            ev = Event(name, self._arg_type(name, expr.get("data")), features, module)
            self.events[name] = ev
            self.entities.append(ev)
        else:
            raise SchemaError(f"{module}: unknown definition {expr!r}")

    def finish(self) -> Schema:
        # Struct bases are flattened: base members come first, as QEMU lays them out.
        def flat(name: str) -> tuple[Member, ...]:
            t = self.types[name]
            assert isinstance(t, ObjectType)
            base = self._bases.get(name)
            return (flat(base) if base else ()) + t.members

        for name in self._bases:
            t = self.types[name]
            assert isinstance(t, ObjectType)
            self.types[name] = ObjectType(name, flat(name), t.tag, t.variants, t.features)
        schema = Schema(self.types, self.commands, self.events, tuple(self.entities))
        for t in list(self.types.values()):
            refs: list[str] = []
            if isinstance(t, ObjectType):
                refs = [m.type for m in t.members] + [v for _, v in t.variants]
            elif isinstance(t, AlternateType):
                refs = [b for _, b in t.branches]
            for ref in refs:
                schema.lookup(ref[1:-1] if ref.startswith("[") else ref)
        for e in self.entities:
            schema.lookup(e.arg_type)
            if isinstance(e, Command) and e.ret_type:
                r = e.ret_type
                schema.lookup(r[1:-1] if r.startswith("[") else r)
        return schema


def parse_modules(modules: dict[str, list[dict[str, Any]]]) -> Schema:
    """Build a schema from already-parsed modules (name -> definitions), in the given order."""
    loader = _Loader()
    for module, exprs in modules.items():
        for expr in exprs:
            loader.add(expr, module)
    return loader.finish()


@functools.cache
def load_schema() -> Schema:
    """The schema from ``migemu/qapi/schema/*.json``, parsed once per process."""
    files = resources.files("migemu.qapi") / "schema"
    modules = {m: json.loads((files / f"{m}.json").read_text("utf-8")) for m in MODULES}
    return parse_modules(modules)


def command_names() -> list[str]:
    """Every command migemu implements, in definition order."""
    return list(load_schema().commands)


def is_known_command(name: str) -> bool:
    return name in load_schema().commands


def command_allows_oob(name: str) -> bool:
    """Whether ``exec-oob`` may run this command (QEMU's ``allow-oob``)."""
    cmd = load_schema().commands.get(name)
    return bool(cmd and cmd.allow_oob)


def command_allows_preconfig(name: str) -> bool:
    cmd = load_schema().commands.get(name)
    return bool(cmd and cmd.allow_preconfig)
