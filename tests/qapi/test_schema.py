"""The QAPI definitions load, resolve, and keep QEMU 7.2's member order."""

from __future__ import annotations

import pytest

from migemu import qapi
from migemu.qapi.schema import (
    EMPTY_OBJECT,
    EnumType,
    ObjectType,
    SchemaError,
    load_schema,
    parse_modules,
)


def test_loaded_once():
    assert load_schema() is load_schema()


def test_commands_and_events():
    s = load_schema()
    for name in [
        "qmp_capabilities", "query-version", "query-commands", "query-qmp-schema",
        "query-status", "query-name", "query-uuid", "stop", "cont", "quit",
        "query-migrate-capabilities", "migrate-set-capabilities", "query-migrate-parameters",
        "migrate-set-parameters", "query-migrate", "migrate", "migrate-incoming",
        "migrate_cancel", "migrate-continue", "human-monitor-command",
    ]:  # fmt: skip
        assert qapi.is_known_command(name), name
    assert set(s.events) == {"MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "SHUTDOWN"}
    assert s.commands["query-status"].arg_type == EMPTY_OBJECT
    assert s.commands["migrate-set-parameters"].arg_type == "MigrateSetParameters"
    assert s.commands["human-monitor-command"].ret_type == "str"
    assert {c for c in qapi.command_names() if qapi.command_allows_oob(c)} == {
        "migrate-pause",
        "migrate-recover",
    }


def test_capability_enum_order():
    t = load_schema().types["MigrationCapability"]
    assert isinstance(t, EnumType)
    assert len(t.values) == 21
    assert t.values[:3] == ("xbzrle", "rdma-pin-all", "auto-converge")
    assert t.values[-3:] == ("background-snapshot", "zero-copy-send", "postcopy-preempt")
    assert {m.name for m in t.members if m.features} == {"x-colo", "x-ignore-shared"}


def test_parameter_member_order_and_types():
    s = load_schema()
    msp = s.types["MigrateSetParameters"]
    mp = s.types["MigrationParameters"]
    assert isinstance(msp, ObjectType) and isinstance(mp, ObjectType)
    assert [m.name for m in msp.members] == [m.name for m in mp.members]
    assert len(msp.members) == 27
    types = {m.name: m.type for m in msp.members}
    assert types["multifd-channels"] == "uint8"
    assert types["max-bandwidth"] == "size"
    assert types["downtime-limit"] == "uint64"
    assert types["x-checkpoint-delay"] == "uint32"
    assert types["tls-creds"] == "StrOrNull"
    assert {m.name: m.type for m in mp.members}["tls-creds"] == "str"
    assert all(m.optional for m in msp.members)


def test_struct_base_is_flattened_first():
    inet = load_schema().types["InetSocketAddress"]
    assert isinstance(inet, ObjectType)
    assert [m.name for m in inet.members][:2] == ["host", "port"]


def test_run_state_enum():
    t = load_schema().types["RunState"]
    assert isinstance(t, EnumType)
    assert t.values[0] == "debug" and t.values[-1] == "colo" and len(t.values) == 16


def test_bad_definitions_are_rejected():
    with pytest.raises(SchemaError):
        parse_modules({"m": [{"command": "x", "returns": "NoSuchType"}]})
    with pytest.raises(SchemaError):
        parse_modules({"m": [{"command": "x"}, {"command": "x"}]})
    with pytest.raises(SchemaError):
        parse_modules({"m": [{"bogus": "x"}]})


def test_generated_json_schemas_are_valid_draft_2020_12():
    import jsonschema

    from migemu.qapi.jsonschema_gen import command_arguments_schema, json_schema_for_type

    s = load_schema()
    for name in s.commands:
        jsonschema.Draft202012Validator.check_schema(command_arguments_schema(s, name))
    info = json_schema_for_type(s, "MigrationInfo")
    jsonschema.Draft202012Validator.check_schema(info)
    ok = {"status": "active", "socket-address": [{"type": "inet", "host": "h", "port": "1"}]}
    assert jsonschema.Draft202012Validator(info).is_valid(ok)
    assert not jsonschema.Draft202012Validator(info).is_valid({"status": "bogus"})
    assert not jsonschema.Draft202012Validator(info).is_valid({"total-time": "1"})
