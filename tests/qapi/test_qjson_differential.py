"""Differential test: our JSON reader and writer against real QEMU 7.2 on a QMP socket.

For each raw input, QEMU gets it on a fresh negotiated connection followed by a sentinel
command, and we collect its reply lines up to the sentinel's. Our prediction feeds the same
bytes to ``JSONStreamParser``, turns each result into the reply the monitor would give (the
few request checks needed are modelled below) and writes it with ``encode_message``. The two
must agree byte for byte: number and order of replies, descs, escapes and key order.
Skipped when ``qemu-system-x86_64`` is not installed.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from migemu.qapi.qjson import JSONParseError, JSONStreamParser, encode_message, qdict_order

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")

SENTINEL = b'{"execute":"query-name","id":"SENTINEL"}\n'
SENTINEL_REPLY = b'{"return": {}, "id": "SENTINEL"}\r\n'
DEADLINE_S = 20.0
_REQUEST_MEMBERS = ("execute", "exec-oob", "arguments", "id")


def _generic(desc: str) -> dict[str, Any]:
    return {"error": {"class": "GenericError", "desc": desc}}


def predicted_reply(result: Any) -> bytes:
    """The reply QEMU's monitor gives for one reader result, after negotiation.

    Only what these inputs need: parse errors, non-objects, request-shape checks (members
    visited in QDict order, as QEMU does) and query-name.
    """
    if isinstance(result, JSONParseError):
        return encode_message(_generic(result.desc))
    request = result.value
    if not isinstance(request, dict):
        return encode_message(_generic("QMP input must be a JSON object"))
    reply: dict[str, Any]
    for key in qdict_order(list(request)):
        if key not in _REQUEST_MEMBERS:
            reply = _generic(f"QMP input member '{key}' is unexpected")
            break
    else:
        command = request.get("execute")
        if command is None:
            reply = _generic("QMP input lacks member 'execute'")
        elif command == "query-name":
            reply = {"return": {}}
        elif command == "qmp_capabilities":
            desc = "Capabilities negotiation is already complete, command ignored"
            reply = {"error": {"class": "CommandNotFound", "desc": desc}}
        else:
            reply = {
                "error": {
                    "class": "CommandNotFound",
                    "desc": f"The command {command} has not been found",
                }
            }
    if "id" in request:
        reply["id"] = request["id"]
    return encode_message(reply)


def predict(data: bytes) -> list[bytes] | None:
    """Our replies for ``data`` + sentinel; None if the sentinel would not be answered."""
    parser = JSONStreamParser()
    replies = [predicted_reply(r) for r in parser.feed(data + SENTINEL)]
    if not replies or replies[-1] != SENTINEL_REPLY:
        return None
    return replies


class RealQEMU:
    """One QEMU with a QMP unix socket; each ``session`` is a fresh negotiated connection."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="qjson-diff-")
        self.path = os.path.join(self.dir, "qmp.sock")
        assert QEMU is not None
        self.proc = subprocess.Popen(
            [QEMU, "-machine", "none", "-nodefaults", "-display", "none",
             "-qmp", f"unix:{self.path},server=on,wait=off"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
            # The socket appears shortly after start; wait for it to become readable.
            select.select([], [], [], 0.01)

    def send_and_hang_up(self, data: bytes) -> None:
        sock = self._connect()
        try:
            sock.sendall(data)
        finally:
            sock.close()

    def session(self, data: bytes) -> list[bytes]:
        sock = self._connect()
        buf = b""
        deadline = time.monotonic() + DEADLINE_S

        def line() -> bytes:
            nonlocal buf
            while b"\n" not in buf:
                ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
                chunk = sock.recv(65536) if ready else b""
                if not chunk:
                    raise TimeoutError(f"no complete reply; got {buf!r}")
                buf += chunk
            text, _, buf = buf.partition(b"\n")
            return text + b"\n"

        try:
            line()  # greeting
            sock.sendall(b'{"execute":"qmp_capabilities"}\n')
            assert line() == b'{"return": {}}\r\n'
            # Send from a thread: QEMU answers while it reads, and we must keep reading.
            sender = threading.Thread(target=sock.sendall, args=(data + SENTINEL,), daemon=True)
            sender.start()
            replies: list[bytes] = []
            while not replies or replies[-1] != SENTINEL_REPLY:
                replies.append(line())
            sender.join(DEADLINE_S)
            return replies
        finally:
            sock.close()


@pytest.fixture(scope="module")
def qemu() -> Iterator[RealQEMU]:
    instance = RealQEMU()
    try:
        yield instance
    finally:
        instance.close()


def check(qemu: RealQEMU, data: bytes) -> None:
    expected = predict(data)
    assert expected is not None, "test input must leave the parser ready for the sentinel"
    assert qemu.session(data) == expected, data


INPUTS: list[bytes] = [
    b'foo bar {"execute":"qmp_capabilities"}\n',
    b'{"a": }\n',
    b"]\n",
    b'{"execute": "x"}}\n',
    b"'abc'\n",
    b'{"execute":"query-name"} {"execute":"query-name","id":2}\n',
    b'{"execute":"query-name"} {"execute":"query-name","id":1}{"execute":"query-name"}',
    b'"\n',
    b"\xff\n",
    b"\x00\n",
    b"[" * 1024 + b"]" * 1024 + b"\n",
    b"[" * 1025 + b"]" * 1025 + b"\n",
    b'{"a":' * 512 + b"[" * 513 + b"]" * 513 + b"}" * 512 + b"\n",
    b"[1 2]\n",
    b'{"a":1 "b":2}\n',
    b'{"a":1,"a":2}\n',
    b"{1:2}\n",
    b'{"a" 1}\n',
    b"[1,]\n{,}\n[}\n",
    b'{"a":1]\n',
    b"True tru truefalse true1 1true\n",
    b"nul\x00l\n",
    b"- 1. 01 -01 1e 1e+ 1.5e .5 +1 1.x -a 1e+5x -0e1 0E 1.5. 1e5e\n",
    b"0.5e3 -0.5E-3 -12e3 00\n",
    b'"a\x01b"}\n"a\xfeb"}\n"a\tb"}\n"a\x00b\n',
    b'"\\x" \'a\\x\' "\\u12" "\\u1" "\\uzzzz" "\\uFFFF" "\\uD800" "\\uDC00"\n',
    b'"\\uD800x" "\\uD800\\u0041" "\\uD800\\u" "\\uDBFF\\uDFFF" "\\u"\n',
    b'"a\xc3" "a\xef\xbf\xbf" "a\xed\xa0\x80" "a\xe0\x80\xaf" "\xf4\x90\x80\x80" "\xef\xb7\x90"\n',
    b'"\xc3\\x" "\\x\xc3"\n',
    b'"\xc3\x01\n"\xe2\x82\x01\n"\xf8\x88\x80\x80\x80\x01\n"\xfc\x84\x80\x80\x80\x80\x01\n',
    b'"\xed\xa0\x80\x01\n"\xc0\x80\x01\n"\xef\xbf\xbf\x01\n"\xc1\xbf\x01\n"\x80\x01\n',
    b'"\xf0\x9f\x98\x80\x01\n"\xe2\x82\xac\x01\n"abc\xff\n\xc3\xa9\n',
    b'@\t{}\n@ \xff{}\n@,:"{}"\n@\x01{}\n@\xfe\n\x0b{}\n\r{}\r\n',
    b"@\nx\n@\rx\n@\tx\n@ x 1 'a' \"b\n@]\n@[1]\n1@\n",
    b'{"a": @ , "b": 1}\n{"c": 2}\n',
    b'{"execute": "query-name", "id": {"a": [1, 2.5]}, "arguments": {}}\n',
]


@pytest.mark.parametrize("data", INPUTS, ids=[repr(d)[:40] for d in INPUTS])
def test_junk_and_recovery(qemu: RealQEMU, data: bytes) -> None:
    check(qemu, data)


IDS: list[bytes] = [
    b'"a/b\\\\c\\"d\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\\u0080'
    b'\\u00e9\\uFFFD\\ud83d\\ude00 \\u0000x\\/"',
    '"\u00e9\U0001f600\x7f\u20ac\u0800\uffef"'.encode(),
    b"'single \\' quoted \"'",
    b'"a\xc0\x80b"',
    b"[1e999,-1e999,9223372036854775807,9223372036854775808,18446744073709551615,"
    b"18446744073709551616,-9223372036854775808,-9223372036854775809,1.0,0.1,-0.0,1e5,"
    b"1E-5,0,-0,12345678901234567890123,5e-324,1.7976931348623157e308,2.5e-308]",
    b"[1" + b"0" * 400 + b", -" + b"1" * 400 + b", 0." + b"0" * 400 + b"1, 4.9e-324, 2e-324]",
    b'{"b":1,"a":[],"c":{},"d":null,"e":true,"f":false}',
    b'{"aa":1,"aq":2}',
    b'{"aq":1,"aa":2}',
    b'{"return": 1, "id": 2, "error": 3, "class": 4, "desc": 5, "event": 6, "data": 7}',
    b"[[[[[[[[[[[]]]]]]]]]]]",
    b"true",
    b"null",
    b"123",
    b'""',
]


@pytest.mark.parametrize("id_text", IDS, ids=[repr(i)[:40] for i in IDS])
def test_id_echo(qemu: RealQEMU, id_text: bytes) -> None:
    check(qemu, b'{"execute":"query-name","id":' + id_text + b"}\n")
    # members in the other order: QEMU keeps its own order for the reply
    check(qemu, b'{"id":' + id_text + b', "execute":"query-name"}\n')


# Every byte in each lexer state. ``{`` and ``[`` leave a message open, so the sentinel
# would be swallowed; they are covered by the tables above.
TEMPLATES = {
    "start": b"%s\n",
    "recovery": b"@%s\n",
    "dq-string": b'"%s"\n',
    "sq-string": b"'%s'\n",
    "escape": b'"\\%s"\n',
    "keyword": b"nul%s\n",
    "integer": b"12%s\n",
    "zero": b"0%s\n",
    "fraction": b"1.5%s\n",
    "exponent": b"1e%s\n",
}


@pytest.mark.parametrize("state", list(TEMPLATES))
def test_every_byte_in_every_state(qemu: RealQEMU, state: str) -> None:
    checked = 0
    for byte in range(256):
        data = TEMPLATES[state].replace(b"%s", bytes([byte]))
        expected = predict(data)
        if expected is None:
            assert byte in b"{[", (state, byte)
            continue
        assert qemu.session(data) == expected, (state, data)
        checked += 1
    assert checked >= 250


_PIECES = [
    b"{", b"}", b"[", b"]", b",", b":", b'"', b"'", b"\\", b"u", b"00", b"D8", b"DC", b"e9",
    b"1", b"0", b"-", b".", b"e", b"E", b"+", b"a", b"true", b"null", b" ", b"\n", b"\r",
    b"\t", b"\x00", b"\x01", b"\x7f", b"\xff", b"\xfe", b"\xc3", b"\xa9", b"\xc0\x80",
    b"\xf0\x9f\x98\x80", b"\xef\xbf\xbf", b"@", b'"execute"', b'"id"', b'"query-name"',
]  # fmt: skip


def test_random_junk(qemu: RealQEMU) -> None:
    rng = random.Random(7203)
    checked = 0
    for _ in range(400):
        data = b"".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 40)))
        # Close whatever is left open so that the sentinel gets its own reply.
        data += b"\"'\n" + b"]}" * 20 + b"\n"
        expected = predict(data)
        if expected is None:
            continue
        assert qemu.session(data) == expected, data
        checked += 1
    assert checked > 300


def test_partial_input_is_dropped_on_disconnect(qemu: RealQEMU) -> None:
    for partial, after in [
        (b'{"execute":"query-name", "id": "half', b'"}\n'),
        (b"[1, 2", b"]\n"),
        (b"12", b"\n"),
    ]:
        qemu.send_and_hang_up(partial)
        parser = JSONStreamParser()
        parser.feed(partial)
        parser.reset()  # what the monitor does when the client goes away
        expected = [predicted_reply(r) for r in parser.feed(after + SENTINEL)]
        assert expected == predict(after)
        assert qemu.session(after) == expected
