"""Fuzzing the QMP input path: bytes -> JSON reader -> monitor session -> dispatch.

Property: whatever arrives -- arbitrary bytes, invalid UTF-8, broken JSON, huge numbers,
deep nesting, valid requests for every command with arbitrary arguments -- the monitor answers
with QEMU-shaped replies only (``return`` or ``error`` with a known class and a desc), never
raises, never reports an internal error (a handler bug), and every reply can be written.
Commands with effects outside the process (migrate, migrate-incoming, HMP, fault injection,
guest threads, quit) are fuzzed for argument validation only. ``MIGEMU_FUZZ_EXAMPLES`` sets the
size of the run (CI: small; the documented long run: README).
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migemu.emulator.machine import Machine, MachineOptions, version_info
from migemu.emulator.qmp.session import QMPSession
from migemu.qapi.errors import QMPError
from migemu.qapi.qjson import MAX_TOKEN_SIZE, JSONStreamParser, encode_message

EXAMPLES = int(os.environ.get("MIGEMU_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ERROR_CLASSES = {"GenericError", "CommandNotFound", "DeviceNotFound", "KVMMissingCap"}
# Handlers that reach outside the process or start threads: validation only.
EFFECTFUL = {
    "migrate", "migrate-incoming", "human-monitor-command", "x-migemu-inject-fault",
    "x-migemu-set-guest", "quit",
}  # fmt: skip

MACHINE = Machine(MachineOptions())
SAFE = sorted(set(MACHINE.dispatcher.names()) - EFFECTFUL)
ALL = sorted(MACHINE.dispatcher.names())


class _ValidateOnly:
    """The dispatcher, except that effectful commands stop after argument validation."""

    def __init__(self, machine: Machine) -> None:
        self.d = machine.dispatcher

    def has(self, name: str) -> bool:
        return self.d.has(name)

    def allows_oob(self, name: str) -> bool:
        return self.d.allows_oob(name)

    def execute(self, name: str, arguments: dict | None = None) -> object:
        if name in EFFECTFUL:
            from migemu.qapi import validate

            validate(name, arguments if arguments is not None else {})
            raise QMPError("validated only")
        return self.d.execute(name, arguments)


def new_session(negotiated: bool = True) -> QMPSession:
    session = QMPSession(_ValidateOnly(MACHINE), version_info())  # type: ignore[arg-type]
    session.negotiated = negotiated
    return session


def check_replies(session: QMPSession, parser: JSONStreamParser, data: bytes) -> int:
    replies = 0
    for item in [*parser.feed(data), *parser.feed_eof()]:
        reply = session.handle(item)
        if reply is None:
            continue
        replies += 1
        assert isinstance(reply, dict)
        keys = set(reply) - {"id"}
        assert keys in ({"return"}, {"error"}), reply
        if "error" in reply:
            err = reply["error"]
            assert set(err) == {"class", "desc"} and err["class"] in ERROR_CLASSES, reply
            assert "internal error" not in err["desc"], reply
        encode_message(reply)  # writable
    return replies


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _arguments(name: str) -> st.SearchStrategy[dict]:
    keys = st.sampled_from(
        ["uri", "capabilities", "state", "spec", "command-line", "enable", "multifd-channels",
         "max-bandwidth", "downtime-limit", "multifd-compression", "capability", "detach",
         "blk", "resume", "x"]
    )  # fmt: skip
    return st.dictionaries(keys | st.text(max_size=10), json_values, max_size=4)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(ALL) | st.text(max_size=15))
    request: dict = {"execute": name}
    if draw(st.booleans()):
        request["arguments"] = draw(_arguments(name))
    if draw(st.booleans()):
        request["id"] = draw(json_values)
    return json.dumps(request).encode()


junk_tokens = st.sampled_from(
    [b"{", b"}", b"[", b"]", b":", b",", b'"', b"'", b"\\", b"\xff", b"\xc3", b"\x00",
     b"1e999999", b"-", b"123456789012345678901234567890", b"true", b"nul", b"\n", b" ",
     b'"\\u00', b'"\\ud800"', b"%d", b"0x10", b"1.5e308", b"\xf4\x90\x80\x80", b"\xed\xa0\x80"]
)  # fmt: skip


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    check_replies(new_session(), JSONStreamParser(), data)


@FUZZ
@given(st.lists(junk_tokens | st.binary(max_size=8), max_size=60))
def test_json_junk(parts: list[bytes]) -> None:
    check_replies(new_session(), JSONStreamParser(), b"".join(parts))


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=4), st.booleans())
def test_requests_for_every_command(reqs: list[bytes], negotiated: bool) -> None:
    session = new_session(negotiated)
    assert check_replies(session, JSONStreamParser(), b"".join(reqs)) == len(reqs)


@FUZZ
@given(st.integers(1, 3000), st.sampled_from([b"[", b"{", b'{"a":']))
def test_deep_nesting(depth: int, opener: bytes) -> None:
    check_replies(new_session(), JSONStreamParser(), opener * depth + b"\n")


@FUZZ
@given(st.integers(1, 4000).map(lambda n: b"9" * n), st.sampled_from([b"", b"-", b"0."]))
def test_huge_numbers(digits: bytes, prefix: bytes) -> None:
    data = b'{"execute": "query-status", "id": ' + prefix + digits + b"}"
    assert check_replies(new_session(), JSONStreamParser(), data) == 1


def test_huge_line_is_bounded() -> None:
    """A string token larger than QEMU's 64 MiB limit: one error reply, and the reader's
    buffer never holds much more than the limit, however long the line goes on."""
    parser = JSONStreamParser()
    session = new_session()
    chunk = b"a" * (1 << 20)
    replies = []
    for item in parser.feed(b'{"execute": "'):
        replies.append(session.handle(item))
    for _ in range((MAX_TOKEN_SIZE >> 20) + 8):
        for item in parser.feed(chunk):
            replies.append(session.handle(item))
    errors = [r for r in replies if r and "error" in r]
    assert errors and errors[0]["error"]["desc"] == "JSON token size limit exceeded"
    for item in parser.feed(b'"}\n{"execute": "query-status"}'):
        replies.append(session.handle(item))
    assert replies[-1] == {"return": MACHINE.vm.status_info()}
