"""HMP over its real transports, replayed from recordings of QEMU 7.2 (end-to-end).

The sessions in ``tests/fixtures/hmp_transcripts/`` were recorded from real QEMU with
``python -m migemu.tools.hmp_record all --out tests/fixtures/hmp_transcripts``: HMP on a
unix socket (line editing, history, completion, help, errors, quit), several clients taking
turns on one socket, ``-mon`` on a TCP chardev beside ``-monitor unix:``, and ``-monitor
stdio`` through a pipe and through a pty. Each is replayed against QEMU (when installed: the
recordings are sound) and against migemu, byte for byte: banner, echo, escape sequences,
CRLF (``\\r\\r\\n`` on a pty), EOF and exit status.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from migemu.emulator.machine import PACKAGE
from migemu.tools import transcript as tr
from migemu.tools.hmp_record import ENCODING, NOTE_CONNECTED, Session

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hmp_transcripts"
QEMU = shutil.which("qemu-system-x86_64")
READ_TIMEOUT_S = 10.0


class Mismatch(AssertionError):
    pass


def replay(entries: list[tr.Entry], argv0: list[str], package: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="hrep-"))
    session = Session(root, argv0)
    try:
        for index, entry in enumerate(entries):
            _step(session, index, entry, package)
    finally:
        session.close()
        shutil.rmtree(root, ignore_errors=True)


def _step(s: Session, index: int, entry: tr.Entry, package: str) -> None:
    mon, direction = entry["mon"], entry["dir"]
    where = f"entry {index} ({mon})"
    if direction == tr.DIR_NOTE:
        text, data = entry.get("text"), entry.get("data") or {}
        if text == tr.NOTE_STARTED:
            s.start(mon, data["argv"], data.get("stdio"))
        elif text == NOTE_CONNECTED:
            s.connect(mon, data["proc"], data.get("monitor", 0))
        elif text == tr.NOTE_CLOSED:
            s.close_client(mon)
        elif text == tr.NOTE_EOF:
            rest = s.clients[mon].read_exactly(1 << 20, READ_TIMEOUT_S)
            if not s.clients[mon].eof or rest:
                raise Mismatch(f"{where}: expected EOF, got {rest!r}")
        elif text == tr.NOTE_EXITED:
            returncode, output = s.wait_exit(mon)
            if returncode != data["returncode"]:
                raise Mismatch(f"{where}: exit status {returncode}, not {data['returncode']}")
            expected = data["stdout+stderr"].replace("qemu-system-x86_64:", "PROG:")
            if output.replace("migemu:", "PROG:") != expected:
                raise Mismatch(f"{where}: {tr.describe_mismatch(expected, output)}")
        return
    stream = s.clients[mon]
    if direction == tr.DIR_C2S:
        stream.send(s.substitute(entry["raw"]).encode(ENCODING))
        return
    expected = s.substitute(entry["raw"]).replace(tr.QEMU_PACKAGE, package)
    want = expected.encode(ENCODING, "replace")
    got = stream.read_exactly(len(want), READ_TIMEOUT_S)
    if got != want:
        raise Mismatch(f"{where}: {tr.describe_mismatch(repr(want)[2:-1], repr(got)[2:-1])}")


def _binaries() -> list[object]:
    return [
        pytest.param(
            [QEMU or "qemu-system-x86_64"],
            tr.QEMU_PACKAGE,
            id="qemu",
            marks=pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed"),
        ),
        pytest.param([sys.executable, "-m", "migemu"], PACKAGE, id="migemu"),
    ]


@pytest.mark.parametrize(("argv0", "package"), _binaries())
@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.jsonl")), ids=lambda p: p.stem)
def test_replay(path: Path, argv0: list[str], package: str) -> None:
    t0 = time.monotonic()
    replay(tr.load(path), argv0, package)
    assert time.monotonic() - t0 < 30
