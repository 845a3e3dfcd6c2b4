"""Introspection: ``query-qmp-schema`` and ``query-commands`` from our definitions (qapi layer).

The result follows QEMU's SchemaInfo format and generation order: first every command and
event in definition order, then the types they use, in order of first use (a work queue:
a type's own member types are queued when it is emitted). Type names other than built-ins
are masked as numbers in that same first-use order, all integer types appear as ``int``,
and commands or events without arguments (or results) refer to the empty object type.
Only what migemu implements is described.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from migemu.qapi.schema import (
    AlternateType,
    ArrayType,
    BuiltinType,
    Command,
    EnumType,
    ObjectType,
    Schema,
    load_schema,
)

_INT_TYPES = frozenset(
    {"int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "size"}
)


class _Generator:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.names: dict[str, str] = {}
        self.used: list[str] = []
        self.out: list[dict[str, Any]] = []

    def _masked(self, name: str) -> str:
        if name not in self.names:
            self.names[name] = str(len(self.names))
        return self.names[name]

    def use(self, type_name: str) -> str:
        """Queue ``type_name`` for emission and return the name clients see."""
        if type_name in _INT_TYPES:
            type_name = "int"
        elif type_name.startswith("[") and type_name[1:-1] in _INT_TYPES:
            type_name = "[int]"
        if type_name not in self.used:
            self.used.append(type_name)
        t = self.schema.lookup(type_name)
        if isinstance(t, BuiltinType):
            return t.name
        if isinstance(t, ArrayType):
            return f"[{self.use(t.element_type)}]"
        return self._masked(type_name)

    @staticmethod
    def _tree(obj: dict[str, Any], name: str, meta: str, features: tuple[str, ...]) -> dict:
        obj["name"] = name
        obj["meta-type"] = meta
        if features:
            obj["features"] = list(features)
        return obj

    def entity(self, e: Any) -> None:
        if isinstance(e, Command):
            obj: dict[str, Any] = {
                "arg-type": self.use(e.arg_type),
                "ret-type": self.use(e.ret_type or "q_empty"),
            }
            if e.allow_oob:
                obj["allow-oob"] = True
            self.out.append(self._tree(obj, e.name, "command", e.features))
        else:
            obj = {"arg-type": self.use(e.arg_type)}
            self.out.append(self._tree(obj, e.name, "event", e.features))

    def type(self, type_name: str) -> None:
        t = self.schema.lookup(type_name)
        if isinstance(t, BuiltinType):
            self.out.append(self._tree({"json-type": t.json_type}, t.name, "builtin", ()))
        elif isinstance(t, ArrayType):
            obj = {"element-type": self.use(t.element_type)}
            self.out.append(self._tree(obj, self.use(type_name), "array", ()))
        elif isinstance(t, EnumType):
            members: list[dict[str, Any]] = []
            for m in t.members:
                member: dict[str, Any] = {"name": m.name}
                if m.features:
                    member["features"] = list(m.features)
                members.append(member)
            obj = {"members": members, "values": list(t.values)}
            self.out.append(self._tree(obj, self._masked(t.name), "enum", ()))
        elif isinstance(t, ObjectType):
            obj = {"members": [self._member(m) for m in t.members]}
            if t.tag is not None:
                obj["tag"] = t.tag
                obj["variants"] = [{"case": c, "type": self.use(v)} for c, v in t.variants]
            self.out.append(self._tree(obj, self._masked(t.name), "object", t.features))
        elif isinstance(t, AlternateType):
            obj = {"members": [{"type": self.use(b)} for _, b in t.branches]}
            self.out.append(self._tree(obj, self._masked(t.name), "alternate", ()))

    def _member(self, m: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {"name": m.name, "type": self.use(m.type)}
        if m.optional:
            obj["default"] = None
        if m.features:
            obj["features"] = list(m.features)
        return obj

    def run(self) -> list[dict[str, Any]]:
        for e in self.schema.entities:
            self.entity(e)
        i = 0
        while i < len(self.used):  # the queue grows while types are emitted
            self.type(self.used[i])
            i += 1
        return self.out


@functools.cache
def _default_schema_info() -> tuple[dict[str, Any], ...]:
    return tuple(_Generator(load_schema()).run())


def query_qmp_schema(schema: Schema | None = None) -> list[dict[str, Any]]:
    """The ``query-qmp-schema`` result (a fresh list: callers may serialize or mutate it)."""
    if schema is not None:
        return _Generator(schema).run()
    return copy.deepcopy(list(_default_schema_info()))


def query_commands(schema: Schema | None = None) -> list[dict[str, str]]:
    """The ``query-commands`` result: QEMU lists commands newest-registered first."""
    s = schema or load_schema()
    return [{"name": name} for name in reversed(list(s.commands))]
