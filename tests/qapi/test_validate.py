"""validate(): QEMU 7.2's input-visitor errors, checked against fixed texts and real QEMU."""

from __future__ import annotations

import importlib
import json
import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migemu.qapi.errors import QMPError
from migemu.qapi.schema import load_schema

# The package re-exports the function validate(), which shadows the submodule attribute.
v = importlib.import_module("migemu.qapi.validate")

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")


def parse_like_qemu(text: str):
    """JSON as QEMU's parser sees it: integers beyond int64/uint64 become doubles."""
    return json.loads(text, parse_int=lambda s: int(s) if -(2**63) <= int(s) < 2**64 else float(s))


def ours(command: str, args_text: str | None) -> tuple[str, object]:
    try:
        result = v.validate(command, None if args_text is None else parse_like_qemu(args_text))
    except QMPError as err:
        return err.error_class, err.desc
    return "ok", result


def real_qemu(requests: list[tuple[str, str | None]]) -> list[tuple[str, object]]:
    """Send requests to one real QEMU over -qmp stdio; the process ends with quit (or timeout)."""
    lines = ['{"execute": "qmp_capabilities"}']
    for command, args in requests:
        lines.append(
            f'{{"execute": "{command}"'
            + ("" if args is None else f', "arguments": {args}')
            + ', "id": "x"}'
        )
    lines.append('{"execute": "quit"}')
    proc = subprocess.run(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", "stdio"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    replies = [json.loads(line) for line in proc.stdout.splitlines() if '"id": "x"' in line]
    assert len(replies) == len(requests), proc.stdout
    out: list[tuple[str, object]] = []
    for r in replies:
        if "error" in r:
            out.append((r["error"]["class"], r["error"]["desc"]))
        else:
            out.append(("ok", r["return"]))
    return out


# (command, arguments text, expected error desc) -- every one verified on QEMU 7.2.22.
ERROR_CASES = [
    (
        "migrate-set-parameters",
        '{"multifd-channels": true}',
        "Parameter 'multifd-channels' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-channels": 4.0}',
        "Parameter 'multifd-channels' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-channels": "4"}',
        "Parameter 'multifd-channels' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-channels": -1}',
        "Parameter 'multifd-channels' expects uint8_t",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-channels": 256}',
        "Parameter 'multifd-channels' expects uint8_t",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-channels": 18446744073709551616}',
        "Parameter 'multifd-channels' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-channels": null}',
        "Parameter 'multifd-channels' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"max-bandwidth": -9223372036854775809}',
        "Parameter 'max-bandwidth' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"max-bandwidth": 1.5}',
        "Parameter 'max-bandwidth' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"max-bandwidth": false}',
        "Parameter 'max-bandwidth' expects uint64",
    ),
    (
        "migrate-set-parameters",
        '{"x-checkpoint-delay": 4294967296}',
        "Parameter 'x-checkpoint-delay' expects uint32_t",
    ),
    (
        "migrate-set-parameters",
        '{"x-checkpoint-delay": -1}',
        "Parameter 'x-checkpoint-delay' expects uint32_t",
    ),
    (
        "migrate-set-parameters",
        '{"tls-creds": 1}',
        "Invalid parameter type for 'tls-creds', expected: StrOrNull",
    ),
    (
        "migrate-set-parameters",
        '{"tls-authz": []}',
        "Invalid parameter type for 'tls-authz', expected: StrOrNull",
    ),
    (
        "migrate-set-parameters",
        '{"block-incremental": 1}',
        "Invalid parameter type for 'block-incremental', expected: boolean",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-compression": null}',
        "Invalid parameter type for 'multifd-compression', expected: string",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-compression": "lz4"}',
        "Parameter 'multifd-compression' does not accept value 'lz4'",
    ),
    (
        "migrate-set-parameters",
        '{"multifd-compression": "ZSTD"}',
        "Parameter 'multifd-compression' does not accept value 'ZSTD'",
    ),
    (
        "migrate-set-parameters",
        '{"foo": 1, "bar": 2, "multifd-channels": "x"}',
        "Parameter 'multifd-channels' expects uint64",
    ),
    ("migrate-set-parameters", '{"foo": 1, "bar": 2, "baz": 3}', "Parameter 'baz' is unexpected"),
    ("migrate-set-parameters", '{"zzz": 1, "aaa": 2}', "Parameter 'zzz' is unexpected"),
    (
        "migrate-set-parameters",
        '{"block-bitmap-mapping": [{"node-name": "a"}]}',
        "Parameter 'block-bitmap-mapping[0].alias' is missing",
    ),
    (
        "migrate-set-parameters",
        '{"block-bitmap-mapping": {}}',
        "Invalid parameter type for 'block-bitmap-mapping', expected: array",
    ),
    (
        "migrate-set-parameters",
        '{"downtime-limit": 1, "max-bandwidth": "x"}',
        "Parameter 'max-bandwidth' expects uint64",
    ),
    ("query-status", '{"foo": 1}', "Parameter 'foo' is unexpected"),
    ("query-migrate", '{"a": null}', "Parameter 'a' is unexpected"),
    ("human-monitor-command", '{"cpu-index": "x"}', "Parameter 'command-line' is missing"),
    (
        "human-monitor-command",
        '{"command-line": "info version", "cpu-index": 9223372036854775808}',
        "Invalid parameter type for 'cpu-index', expected: integer",
    ),
    (
        "human-monitor-command",
        '{"command-line": "info version", "cpu-index": 1.0}',
        "Invalid parameter type for 'cpu-index', expected: integer",
    ),
    (
        "human-monitor-command",
        '{"command-line": 5}',
        "Invalid parameter type for 'command-line', expected: string",
    ),
    (
        "migrate-set-capabilities",
        '{"capabilities": [{"capability": "foo", "state": 1}]}',
        "Parameter 'capability' does not accept value 'foo'",
    ),
    (
        "migrate-set-capabilities",
        '{"capabilities": [{"capability": "events"}]}',
        "Parameter 'capabilities[0].state' is missing",
    ),
    (
        "migrate-set-capabilities",
        '{"capabilities": [{"capability": "events", "state": 1}]}',
        "Invalid parameter type for 'capabilities[0].state', expected: boolean",
    ),
    (
        "migrate-set-capabilities",
        '{"capabilities": [{"capability": "events", "state": true, "x": 1}, {"capability": 7}]}',
        "Parameter 'capabilities[0].x' is unexpected",
    ),
    (
        "migrate-set-capabilities",
        '{"capabilities": [{"capability": "events", "state": true}, {"capability": 7}], "y": 1}',
        "Invalid parameter type for 'capabilities[1].capability', expected: string",
    ),
    ("migrate-set-capabilities", '{"capabilities": [], "y": 1}', "Parameter 'y' is unexpected"),
    (
        "migrate-set-capabilities",
        '{"capabilities": {}}',
        "Invalid parameter type for 'capabilities', expected: array",
    ),
    (
        "migrate-set-capabilities",
        '{"capabilities": [3]}',
        "Invalid parameter type for 'capabilities[0]', expected: object",
    ),
    ("migrate-set-capabilities", None, "Parameter 'capabilities' is missing"),
    ("migrate-continue", '{"state": "bogus"}', "Parameter 'state' does not accept value 'bogus'"),
    ("migrate", '{"uri": 1}', "Invalid parameter type for 'uri', expected: string"),
    ("migrate", '{"blk": true}', "Parameter 'uri' is missing"),
    (
        "migrate",
        '{"uri": "tcp:x:1", "detach": "yes"}',
        "Invalid parameter type for 'detach', expected: boolean",
    ),
    ("migrate-incoming", "{}", "Parameter 'uri' is missing"),
]


@pytest.mark.parametrize(("command", "args", "desc"), ERROR_CASES)
def test_error_text(command, args, desc):
    assert ours(command, args) == ("GenericError", desc)


@needs_qemu
def test_error_texts_match_real_qemu():
    requests = [(c, a) for c, a, _ in ERROR_CASES]
    assert [ours(c, a) for c, a in requests] == real_qemu(requests)


def test_qmp_capabilities_errors():
    # qmp_capabilities is rejected by real QEMU after negotiation, so no differential here.
    assert ours("qmp_capabilities", '{"enable": [1]}') == (
        "GenericError",
        "Invalid parameter type for 'enable[0]', expected: string",
    )
    assert ours("qmp_capabilities", '{"enable": ["foo"]}') == (
        "GenericError",
        "Parameter 'null' does not accept value 'foo'",
    )
    assert ours("qmp_capabilities", '{"enable": ["oob"]}') == ("ok", {"enable": ["oob"]})


def test_unknown_command():
    assert ours("no-such-command", None) == (
        "CommandNotFound",
        "The command no-such-command has not been found",
    )
    assert not v.is_known_command("Query-status")
    assert v.is_known_command("query-status")


def test_success_returns_normalized_arguments():
    assert ours("migrate-set-parameters", '{"max-bandwidth": -1}') == (
        "ok",
        {"max-bandwidth": 2**64 - 1},
    )
    assert ours("migrate-set-parameters", '{"downtime-limit": -2}') == (
        "ok",
        {"downtime-limit": 2**64 - 2},
    )
    assert ours("migrate-set-parameters", '{"tls-creds": null}') == ("ok", {"tls-creds": None})
    assert ours("query-status", None) == ("ok", {})
    assert ours("query-status", "{}") == ("ok", {})


def test_every_command_accepts_its_minimal_arguments():
    schema = load_schema()
    for name in v.command_names():
        arg_type = schema.lookup(schema.commands[name].arg_type)
        required = [m for m in arg_type.members if not m.optional]
        if not required:
            assert v.validate(name, None) == {}


@needs_qemu
def test_accepted_values_match_real_qemu():
    # Values QEMU accepts; the set that follows may still fail migrate_params_check, so
    # compare only the class of outcome for those that pass the visitor.
    requests = [
        ("migrate-set-parameters", '{"max-bandwidth": 18446744073709551615}'),
        ("migrate-set-parameters", '{"max-bandwidth": -1}'),
        ("migrate-set-parameters", '{"tls-creds": null, "tls-hostname": "h", "tls-authz": null}'),
        ("migrate-set-parameters", '{"tls-creds": ""}'),
        ("migrate-set-capabilities", '{"capabilities": []}'),
    ]
    for (cls, _), (command, args) in zip(real_qemu(requests), requests, strict=True):
        assert cls == "ok"
        assert ours(command, args)[0] == "ok"


def _random_unknown_sets(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz-_0123456789"
    known = [
        "multifd-channels",
        "downtime-limit",
        "cpu-throttle-initial",
        "announce-step",
        "max-bandwidth",
    ]
    out = []
    for _ in range(count):
        n = rng.randint(2, 30)
        names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(n)}
        members = [f'"{k}": 1' for k in sorted(names)]
        members += [f'"{k}": 100' for k in rng.sample(known, rng.randint(0, len(known)))]
        rng.shuffle(members)
        out.append("{" + ", ".join(members) + "}")
    return out


@needs_qemu
def test_first_unexpected_member_follows_qemu_hash_order():
    requests = [("migrate-set-parameters", a) for a in _random_unknown_sets(7, 200)]
    assert [ours(c, a) for c, a in requests] == real_qemu(requests)


def test_first_unexpected_key_helper():
    assert v.first_unexpected_key(["foo", "bar", "baz"], []) == "baz"
    assert v.first_unexpected_key(["zzz", "aaa"], []) == "zzz"
    assert v.first_unexpected_key(["a", "b"], ["a", "b"]) is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from(v.command_names()),
    arguments=st.dictionaries(
        st.sampled_from(["capabilities", "capability", "state", "uri", "enable", "cpu-index",
                         "command-line", "multifd-channels", "tls-creds", "block-bitmap-mapping",
                         "x"]) | st.text(max_size=6),
        json_values,
        max_size=5,
    ),
)  # fmt: skip
def test_any_arguments_give_a_result_or_a_qmp_error(command, arguments):
    try:
        result = v.validate(command, arguments)
    except QMPError as err:
        assert err.error_class == "GenericError"
        assert err.desc.startswith(("Parameter '", "Invalid parameter type for '"))
    else:
        assert set(result) == set(arguments)
