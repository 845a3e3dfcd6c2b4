"""query-qmp-schema / query-commands: shape checks, and a structural diff against QEMU 7.2."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from migemu.qapi import introspect
from migemu.qapi.schema import load_schema, parse_modules

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")


def expand(info: list[dict], name: str, stack: tuple[str, ...] = ()) -> object:
    """A type's full structure with masked names replaced by what they stand for."""
    by_name = {e["name"]: e for e in info}
    if name in stack:
        return f"<cycle {stack.index(name)}>"
    e = by_name[name]
    stack = (*stack, name)
    meta = e["meta-type"]
    out: dict[str, object] = {"meta-type": meta}
    if "features" in e:
        out["features"] = e["features"]
    if meta == "builtin":
        out["name"] = e["name"]
        out["json-type"] = e["json-type"]
    elif meta == "array":
        out["element-type"] = expand(info, e["element-type"], stack)
    elif meta == "enum":
        out["members"] = e["members"]
        out["values"] = e["values"]
    elif meta == "alternate":
        out["members"] = [expand(info, m["type"], stack) for m in e["members"]]
    elif meta == "object":
        out["members"] = [{**m, "type": expand(info, m["type"], stack)} for m in e["members"]]
        if "tag" in e:
            out["tag"] = e["tag"]
            out["variants"] = [
                {"case": v["case"], "type": expand(info, v["type"], stack)} for v in e["variants"]
            ]
    elif meta in ("command", "event"):
        out["name"] = e["name"]
        for k in ("arg-type", "ret-type"):
            if k in e:
                out[k] = expand(info, e[k], stack)
        if "allow-oob" in e:
            out["allow-oob"] = e["allow-oob"]
    return out


@pytest.fixture(scope="module")
def real_replies() -> dict[int, object]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    proc = subprocess.run(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", "stdio"],
        input='{"execute": "qmp_capabilities"}\n'
        '{"execute": "query-qmp-schema", "id": 1}\n'
        '{"execute": "query-commands", "id": 2}\n{"execute": "quit"}\n',
        capture_output=True,
        text=True,
        timeout=30,
    )
    replies = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"return"')]
    return {r["id"]: r["return"] for r in replies if "id" in r}


@pytest.fixture(scope="module")
def real_schema(real_replies) -> list[dict]:
    return real_replies[1]


def test_entities_first_then_types():
    info = introspect.query_qmp_schema()
    metas = [e["meta-type"] for e in info]
    n_entities = len(load_schema().entities)
    assert set(metas[:n_entities]) <= {"command", "event"}
    assert not {"command", "event"} & set(metas[n_entities:])
    assert info[0]["name"] == "query-status"
    # every referenced type is described exactly once
    names = [e["name"] for e in info]
    assert len(names) == len(set(names))
    for e in info:
        for k in ("arg-type", "ret-type", "element-type"):
            if k in e:
                assert e[k] in names
        for m in e.get("members", []):
            if "type" in m:
                assert m["type"] in names


def test_masked_names_and_integer_types():
    info = introspect.query_qmp_schema()
    by_name = {e["name"]: e for e in info}
    assert by_name["0"] == {"members": [], "name": "0", "meta-type": "object"}
    builtins = {e["name"] for e in info if e["meta-type"] == "builtin"}
    assert builtins <= {"str", "int", "bool", "number", "null", "any"}
    assert "uint8" not in json.dumps(info)
    msp = expand(info, "migrate-set-parameters")["arg-type"]
    members = {m["name"]: m for m in msp["members"]}
    assert members["multifd-channels"]["type"]["name"] == "int"
    assert members["x-checkpoint-delay"]["features"] == ["unstable"]
    assert members["tls-creds"]["type"]["meta-type"] == "alternate"


def test_query_commands_lists_every_command_newest_first():
    names = [c["name"] for c in introspect.query_commands()]
    assert names == list(reversed(list(load_schema().commands)))


def test_query_qmp_schema_returns_fresh_copies():
    a = introspect.query_qmp_schema()
    a[0]["name"] = "mutated"
    assert introspect.query_qmp_schema()[0]["name"] == "query-status"


def test_migemu_only_command_is_one_definition():
    modules = {
        "run-state": [{"command": "query-status"}],
        "migemu": [{"command": "x-migemu-hello", "data": {"who": "str"}, "returns": "str"}],
    }
    schema = parse_modules(modules)
    info = introspect.query_qmp_schema(schema)
    assert {
        "arg-type": "1",
        "ret-type": "str",
        "name": "x-migemu-hello",
        "meta-type": "command",
    } in info


@needs_qemu
def test_every_entity_matches_real_qemu(real_schema):
    ours = introspect.query_qmp_schema()
    real_names = {e["name"] for e in real_schema}
    for entity in load_schema().entities:
        if getattr(entity, "module", None) == "migemu":
            continue  # migemu-only (x-migemu-*): QEMU has no such command
        assert entity.name in real_names, entity.name
        mine, real = expand(ours, entity.name), expand(real_schema, entity.name)
        if entity.name == "object-add":  # migemu defines the branches of its object types
            mine, real = _defined_variants(mine, real)
        assert mine == real, entity.name


def _defined_variants(mine: Any, real: Any) -> tuple[Any, Any]:
    """object-add's ObjectOptions, real QEMU's cut to the branches migemu has (the rest are
    empty in ours); base members, tag and the qom-type enum compare in full."""
    ours_arg, real_arg = mine["arg-type"], real["arg-type"]
    defined = {v["case"] for v in ours_arg["variants"] if v["type"]["members"]}
    real_arg = {**real_arg, "variants": [v for v in real_arg["variants"] if v["case"] in defined]}
    ours_arg = {**ours_arg, "variants": [v for v in ours_arg["variants"] if v["case"] in defined]}
    assert len(defined) >= 4
    return {**mine, "arg-type": ours_arg}, {**real, "arg-type": real_arg}


@needs_qemu
def test_entity_and_command_order_follow_real_qemu(real_schema, real_replies):
    ours = [
        e["name"]
        for e in introspect.query_qmp_schema()
        if e["meta-type"] in ("command", "event") and not e["name"].startswith("x-migemu-")
    ]
    real = [e["name"] for e in real_schema if e["name"] in ours]
    assert ours == real
    ours_cmds = [
        c["name"] for c in introspect.query_commands() if not c["name"].startswith("x-migemu-")
    ]
    assert ours_cmds == [c["name"] for c in real_replies[2] if c["name"] in ours_cmds]
