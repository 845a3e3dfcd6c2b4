"""Scenarios for the QMP protocol layer: negotiation, request shape, ids, JSON errors.

Each recording exercises what a QMP server must answer before any command runs: the
capabilities handshake, the checks on the request object, the ``id`` echo (QEMU
re-serialises ids, so an object id comes back in QDict key order) and the JSON parser's
errors and resynchronisation. The raw texts are deliberate; do not "fix" them.
"""

from __future__ import annotations

from migemu.tools.scenarios.steps import Step, connect, qemu_argv, qmp, quit_, send, session, start

QUIET_S = 0.2


def qmp_negotiation() -> list[Step]:
    n, m = "qmp_negotiation", "src"
    return [
        start(m, qemu_argv(n, m)),
        connect(m),
        qmp(m, "query-status"),
        qmp(m, "query-status", id=1),
        qmp(m, "no-such-command"),
        qmp(m, "no-such-command", id="x"),
        qmp(m, "qmp_capabilities", {"enable": ["foo"]}),
        qmp(m, "qmp_capabilities", {"enable": "oob"}),
        qmp(m, "qmp_capabilities", {"enable": [1]}),
        qmp(m, "qmp_capabilities", {"enable": None}),
        qmp(m, "qmp_capabilities", {"foo": 1}),
        qmp(m, "qmp_capabilities", []),
        send(m, '{"execute": "query-status", "foo": 1}\n'),
        send(m, "[]\n"),
        send(m, "{nope}\n", quiet=QUIET_S),
        qmp(m, "qmp_capabilities", id="neg"),
        qmp(m, "qmp_capabilities"),
        qmp(m, "qmp_capabilities", {"enable": ["oob"]}),
        qmp(m, "no-such-command"),
        qmp(m, "Query-Status"),
        qmp(m, "query-status"),
        *quit_(m),
    ]


def qmp_oob() -> list[Step]:
    n, m = "qmp_oob", "src"
    return [
        start(m, qemu_argv(n, m)),
        connect(m),
        qmp(m, "qmp_capabilities", {"enable": ["oob", "oob"]}, id=0),
        send(m, '{"exec-oob": "query-status", "id": 1}\n'),
        send(m, '{"exec-oob": "query-status"}\n'),
        send(m, '{"exec-oob": "migrate-pause", "id": 2}\n'),
        send(m, '{"exec-oob": "no-such-command", "id": 3}\n'),
        send(m, '{"execute": "query-status", "exec-oob": "query-status", "id": 4}\n'),
        send(m, '{"exec-oob": 1, "id": 5}\n'),
        send(m, '{"execute": "query-status", "id": 6}\n'),
        *quit_(m),
    ]


def qmp_request_shape() -> list[Step]:
    n, m = "qmp_request_shape", "src"
    raws = [
        # not an object
        "[]",
        '["execute", "query-status"]',
        "1",
        "-2.5",
        '"query-status"',
        "null",
        "true",
        "false",
        # no execute / execute of the wrong type
        "{}",
        '{"arguments": {}}',
        '{"id": 1}',
        '{"id": {"b": 1, "a": 2}, "arguments": {}}',
        '{"execute": 1}',
        '{"execute": null, "id": 2}',
        '{"execute": ["query-status"]}',
        '{"execute": {"name": "query-status"}}',
        '{"execute": true}',
        '{"execute": ""}',
        # arguments of the wrong type
        '{"execute": "query-status", "arguments": []}',
        '{"execute": "query-status", "arguments": "x", "id": 3}',
        '{"execute": "query-status", "arguments": null}',
        '{"execute": "query-status", "arguments": 1}',
        '{"execute": "query-status", "arguments": {"foo": 1}}',
        '{"execute": "query-status", "arguments": {}}',
        # extra members, oob without negotiation
        '{"execute": "query-status", "foo": 1}',
        '{"execute": "query-status", "foo": 1, "bar": 2, "id": 4}',
        '{"execute": "query-status", "control": {}}',
        '{"exec-oob": "query-status"}',
        '{"exec-oob": "query-status", "id": 5}',
        '{"execute": "query-status", "exec-oob": "query-status"}',
        '{"exec-oob": "migrate-pause"}',
        # member order of the request does not matter
        '{"id": 6, "arguments": {}, "execute": "query-status"}',
    ]
    ids = [
        "0",
        "1",
        "-1",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "-9223372036854775809",
        "1.5",
        "-0.0",
        "1e3",
        "1E-7",
        "0.1",
        "123456789.123456789",
        '""',
        '"id"',
        '"caf\\u00e9 \\u2603 \\"q\\" \\\\ \\/ \\b\\f\\n\\r\\t"',
        '"caf\u00e9"',
        "true",
        "false",
        "null",
        "[]",
        "{}",
        '[1, "a", null, [true, {}]]',
        '{"b": 1, "a": 2}',
        '{"id": 1, "execute": "x", "arguments": 2, "return": 3, "error": 4, "class": 5}',
        '{"z": {"y": 1, "x": [{"k": 1, "j": 2}]}, "a": {"c": {}, "b": []}}',
        '{"key-a": 1, "key-b": 2, "key-c": 3, "key-d": 4, "key-e": 5, "key-f": 6}',
        "{'single': 'quoted'}",
    ]
    steps = session(n, m)
    steps += [send(m, raw + "\n") for raw in raws]
    for ident in ids:
        steps.append(send(m, '{"execute": "query-name", "id": ' + ident + "}\n"))
    # an id comes back on errors too, and before the execute member is looked at
    steps += [
        send(m, '{"id": {"y": 1, "x": 2}, "execute": "no-such-command"}\n'),
        send(m, '{"id": [3], "execute": "query-status", "arguments": {"a": 1}}\n'),
        send(m, '{"id": "e", "execute": "query-status", "unexpected": true}\n'),
        send(m, '{"id": "f", "execute": 7}\n'),
        send(m, '{"id": "g"}\n'),
    ]
    return steps + quit_(m)


def qmp_json_errors() -> list[Step]:
    n, m = "qmp_json_errors", "src"
    raws = [
        "this\n",
        "{this}\n",
        "nul\n",
        "True\n",
        "@\n",
        '{"execute": "query-status"} ~\n',
        "#\n",
        '{"execute": }\n',
        '{"execute": "query-status",}\n',
        "[1,]\n",
        ",\n",
        ":\n",
        '{"execute": "query-\\x"}\n',
        '{"execute": "query-\\u12"}\n',
        '{"execute": "query-status", "execute": "query-name"}\n',
        '{"execute" "query-status"}\n',
        '{"execute": "query-status" "id": 1}\n',
        '{"execute": "query-status", "id": [1 2]}\n',
        "}\n",
        "]\n",
        "{]\n",
        "[}\n",
        "{1: 2}\n",
        '{"execute": "query-status"}{"execute": "query-name"}\n',
        '{"execute": "query-status"} {"execute": "query-name"} {"execute": "query-version"}\n',
        '{"execute": "query-status"}[]{"id": 1}\n',
        "{'execute': 'query-status'}\n",
        "{'execute': 'query-name', 'id': 'single'}\n",
        "{\"execute\": 'query-status', 'id': \"mixed\"}\n",
        "\n",
        "   \t  \n",
        '{"execute":\n',
        '"query-status"}\n',
        '{"execute": "query-status", "id": "a\nb"}\n',
        '{"execute": "query-status", "id": "tab\there"}\n',
        '{"execute": "query-status", "id": 01}\n',
        '{"execute": "query-status", "id": 1.}\n',
        '{"execute": "query-status", "id": .5}\n',
        '{"execute": "query-status", "id": +1}\n',
        '{"execute": "query-status", "id": 0x10}\n',
        '{"execute": "query-status", "id": "\\ud800"}\n',
        '{"execute": "query-status", "id": "\\u0000"}\n',
        '{"execute": "query-status", "id": "\xff"}\n',
        '{"execute": "query-status", "id": "\\u00e9"}\n',
        '{"execute": "query-status", "id": "\udcff"}\n',
        '{"execute": "query-status", "id": 1}\n',
    ]
    steps = session(n, m)
    steps += [send(m, raw, replies=0, quiet=QUIET_S) for raw in raws]
    return steps + quit_(m)


def qmp_framing() -> list[Step]:
    """How bytes become requests: pipelined lines, split writes, no newline, CRLF, odd bytes."""
    n, m = "qmp_framing", "src"
    steps = session(n, m)
    pipelined = "".join(
        f'{{"execute": "query-status", "id": {i}}}\n' if i % 2 else f"bad{i}\n" for i in range(6)
    )
    steps += [
        send(m, pipelined, replies=9),
        send(m, '{"execute": "query-', replies=0),
        send(m, 'name", "id": "split"', replies=0),
        send(m, "}\n"),
        send(m, '{"execute": "query-name", "id": "no-newline"}'),
        send(m, '\n{"execute": "query-name", "id": "crlf"}\r\n'),
        send(m, '\r\n\r\n{"execute": "query-name", "id": "blank lines first"}\n'),
        send(m, '\ufeff{"execute": "query-name", "id": "bom"}\n', replies=2),
        send(m, '{"execute": "query-name", "id": "nul"}\x00\n', replies=2),
        send(m, '\x00{"execute": "query-name"}\n', replies=2),
        send(m, '\x1b[A{"execute": "query-name"}\n', replies=3),
        send(m, '{"execute": "query-name", "id": "after junk"}\n', quiet=QUIET_S),
        send(m, '{"execute": "query-name", "id": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}\n'),
        send(m, '{"execute": "query-name", "id": "' + "x" * 5000 + '"}\n'),
    ]
    return steps + quit_(m)


SCENARIOS = {
    "qmp_negotiation": qmp_negotiation(),
    "qmp_oob": qmp_oob(),
    "qmp_request_shape": qmp_request_shape(),
    "qmp_json_errors": qmp_json_errors(),
    "qmp_framing": qmp_framing(),
}
