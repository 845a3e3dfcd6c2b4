"""Synchronous ``migrate`` (no ``-d``) on a real HMP monitor, against QEMU 7.2 and migemu.

QEMU suspends the monitor until the migration leaves setup/active (polled once a second):
no prompt, and what the user typed meanwhile is neither echoed nor run until then. A failed
migration prints nothing on the monitor; the error goes to stderr. Through
``human-monitor-command`` the wait is impossible and QEMU says so (see ``i_hmp``).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from migemu.tools.hmp_record import Session, Stream

QEMU = shutil.which("qemu-system-x86_64")
BASE = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-m", "32M"]
PROMPT = b"(qemu) "
TIMEOUT_S = 20.0
HMC = "human-monitor-command"

BINARIES = [
    pytest.param(
        [QEMU or "qemu-system-x86_64"],
        id="qemu",
        marks=pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed"),
    ),
    pytest.param([sys.executable, "-m", "migemu"], id="migemu"),
]


@pytest.fixture(params=BINARIES)
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    root = Path(tempfile.mkdtemp(prefix="hsync-"))
    s = Session(root, request.param)
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(root, ignore_errors=True)


def echo(line: bytes) -> bytes:
    """What QEMU's readline sends back while ``line`` is typed, then Enter."""
    out = b""
    for i in range(1, len(line) + 1):
        out += b"\x1b[D" * (i - 1) + line[:i] + b"\x1b[K"
    return out + b"\r\n"


def read_until(s: Session, client: str, end: bytes) -> bytes:
    return s.clients[client].read_until(end, 0.0, TIMEOUT_S)


def start_destination(s: Session) -> None:
    """A destination listening on PORT_in once this returns (its prompt came back)."""
    argv = [*BASE, "-incoming", "defer", "-monitor", "unix:SOCK_dst,server=on,wait=off"]
    s.start("dst", argv, None)
    s.connect("d", "dst")
    read_until(s, "d", PROMPT)
    s.clients["d"].send(s.substitute("migrate_incoming tcp:127.0.0.1:PORT_in\r").encode())
    read_until(s, "d", b"\r\n" + PROMPT)


def test_synchronous_migrate_holds_the_monitor(session: Session) -> None:
    s = session
    start_destination(s)
    s.start("src", [*BASE, "-monitor", "unix:SOCK_src,server=on,wait=off"], None)
    s.connect("c", "src")
    read_until(s, "c", PROMPT)
    s.clients["c"].send(b"migrate_set_parameter max-bandwidth 16M\r")
    read_until(s, "c", b"\r\n" + PROMPT)
    migrate = s.substitute("migrate tcp:127.0.0.1:PORT_in").encode()
    s.clients["c"].send(migrate + b"\rinfo status\r")
    got = read_until(s, "c", b"VM status: paused (postmigrate)\r\n" + PROMPT)
    # Nothing between the migrate line and the prompt: the typed-ahead line waited.
    assert got == echo(migrate) + PROMPT + echo(b"info status") + (
        b"VM status: paused (postmigrate)\r\n" + PROMPT
    )
    s.clients["c"].send(b"quit\r")
    read_until(s, "c", b"quit\x1b[K\r\n")
    assert s.wait_exit("src") == (0, "")


def test_failed_synchronous_migrate_reports_on_stderr(session: Session) -> None:
    s = session
    s.start("src", [*BASE, "-monitor", "unix:SOCK_src,server=on,wait=off"], None)
    s.connect("c", "src")
    read_until(s, "c", PROMPT)
    migrate = s.substitute("migrate tcp:127.0.0.1:PORT_closed").encode()
    s.clients["c"].send(migrate + b"\r")
    assert read_until(s, "c", PROMPT) == echo(migrate) + PROMPT
    s.clients["c"].send(b"quit\r")
    read_until(s, "c", b"quit\x1b[K\r\n")
    status, output = s.wait_exit("src")
    error = "Failed to connect to '127.0.0.1:PORT_closed': Connection refused"
    prog = "migemu" if "migemu" in s.argv0 else "qemu-system-x86_64"
    assert (status, output) == (0, f"{prog}: {error}\n" * 2)


def test_human_monitor_command_cannot_wait(session: Session) -> None:
    s = session
    start_destination(s)
    s.start("src", [*BASE, "-qmp", "unix:SOCK_qmp,server=on,wait=off"], None)
    qmp = s.clients["q"] = Stream.connect("unix", s.substitute("SOCK_qmp"), s.procs["src"].proc)
    qmp.read_until(b"\r\n", 0.0, TIMEOUT_S)
    qmp.send(b'{"execute": "qmp_capabilities"}')
    qmp.read_until(b"\r\n", 0.0, TIMEOUT_S)
    line = s.substitute("migrate tcp:127.0.0.1:PORT_in")
    qmp.send(json.dumps({"execute": HMC, "arguments": {"command-line": line}}).encode())
    while True:
        reply = json.loads(qmp.read_until(b"\r\n", 0.0, TIMEOUT_S).split(b"\r\n")[0])
        if "event" not in reply:
            break
    text = "terminal does not allow synchronous migration, continuing detached\r\n"
    assert reply == {"return": text}
