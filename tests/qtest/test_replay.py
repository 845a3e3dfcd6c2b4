"""Differential replay: recorded real-QEMU 7.2 QMP sessions against each binary under test.

Every transcript (the shared ``a_basics`` and ours in ``tests/fixtures/transcripts/``) is
replayed against real QEMU when it is installed (proving the harness and the recordings
sound) and against migemu (``python -m migemu``), which must be byte-identical.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from migemu.tools import transcript as tr

try:
    from . import replay as replay_engine
except ImportError:  # tests/qtest is not a package: pytest put its directory on sys.path
    import replay as replay_engine  # type: ignore[no-redef]

# The one switch the lead flips when migemu's QMP server lands: set to None.
MIGEMU_XFAIL_REASON: str | None = None

QEMU = shutil.which("qemu-system-x86_64")
FIXTURES = Path(__file__).parents[1] / "fixtures" / "transcripts"
SHARED = Path(__file__).parents[2].parent / "shared" / "reference" / "transcripts"
SHARED_REPLAYED = ["a_basics"]
# Transcripts with real migrations: timing-dependent (query-migrate polling, RAM counters).
OUT_OF_SCOPE = {
    "d_multifd_zstd": "real multifd migration: timing-dependent, not replayed yet",
    "e_cancel": "real migration and cancel: timing-dependent, not replayed yet",
    "i_hmp": "HMP during real migrations: replayed by test_hmp_i_hmp.py (numbers masked)",
}


def _transcripts() -> list[object]:
    params: list[object] = []
    for name in SHARED_REPLAYED:
        path = SHARED / f"{name}.jsonl"
        marks = [] if path.exists() else [pytest.mark.skip(reason=f"shared {path} absent")]
        params.append(pytest.param(path, id=name, marks=marks))
    for name, reason in OUT_OF_SCOPE.items():
        params.append(
            pytest.param(SHARED / f"{name}.jsonl", id=name, marks=pytest.mark.skip(reason=reason))
        )
    for path in sorted(FIXTURES.glob("*.jsonl")):
        params.append(pytest.param(path, id=path.stem))
    return params


def _qemu(argv: list[str]) -> list[str]:
    assert QEMU is not None
    return [QEMU, *argv[1:]]


def _migemu(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "migemu", *argv[1:]]


BINARIES = [
    pytest.param(
        _qemu,
        id="qemu",
        marks=pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed"),
    ),
    pytest.param(
        _migemu,
        id="migemu",
        marks=(
            [pytest.mark.xfail(reason=MIGEMU_XFAIL_REASON, strict=False)]
            if MIGEMU_XFAIL_REASON
            else []
        ),
    ),
]


@pytest.mark.parametrize("path", _transcripts())
@pytest.mark.parametrize("command", BINARIES)
def test_replay(command: replay_engine.Command, path: Path) -> None:
    entries = tr.load(path)
    replay_engine.replay(path.stem, entries, command)


def test_fixtures_present() -> None:
    assert sorted(FIXTURES.glob("*.jsonl")), f"no recordings in {FIXTURES}"


def test_fixtures_hold_no_host_paths() -> None:
    for path in FIXTURES.glob("*.jsonl"):
        text = path.read_text(encoding="utf-8")
        assert "/tmp/" not in text and "/rec-" not in text, path


def test_mask_timestamps_keeps_shape() -> None:
    raw = '{"timestamp": {"seconds": 1795799627, "microseconds": 764479}, "event": "STOP"}\r\n'
    assert tr.mask_timestamps(raw) == (
        '{"timestamp": {"seconds": S, "microseconds": U}, "event": "STOP"}\r\n'
    )


def test_replay_detects_a_difference() -> None:
    """The harness is a test that can fail: a doctored reply must be reported."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    entries = tr.load(FIXTURES / "vm_name_options.jsonl")
    for entry in entries:
        if entry["dir"] == tr.DIR_S2C and '"name": "vm,one"' in entry["raw"]:
            entry["raw"] = entry["raw"].replace("vm,one", "vm,two")
            break
    else:
        pytest.fail("fixture changed: no query-name reply")
    with pytest.raises(replay_engine.ReplayMismatch, match="vm,two"):
        replay_engine.replay("doctored", entries, _qemu)


def test_every_fixture_has_its_scenario() -> None:
    from migemu.tools.scenarios import SCENARIOS

    assert {p.stem for p in FIXTURES.glob("*.jsonl")} == set(SCENARIOS)


def test_placeholders_round_trip(tmp_path: Path) -> None:
    ph = tr.Placeholders(tmp_path)
    argv = ["x", "mem-path=IMAGE_256M,share=off", "unix:SOCK_s-src,server=on", "DST_RAM_s-dst"]
    real = ph.substitute_argv(argv)
    assert real[1] == f"mem-path={tmp_path}/IMAGE_256M,share=off"
    assert (tmp_path / "IMAGE_256M").stat().st_size == tr.IMAGE_SIZE_BYTES
    assert not (tmp_path / "SOCK_s-src").exists()
    assert [ph.unsubstitute(a) for a in real] == argv
    assert tr.qmp_socket(["q", "-qmp", "unix:SOCK_s-src,server=on,wait=off"]) == "SOCK_s-src"
    ph.cleanup()
    assert not (tmp_path / "IMAGE_256M").exists()


def test_monitor_socket_reads_exact_lines() -> None:
    import socket

    from migemu.tools.record import MonitorSocket

    a, b = socket.socketpair()
    mon = MonitorSocket(a)
    b.sendall(b'{"return": {}}\r\n{"ret')
    assert mon.read_line(1.0) == '{"return": {}}\r\n'
    with pytest.raises(TimeoutError):
        mon.read_line(0.01)
    b.sendall(b'urn": 1}\r\n\xff tail')
    assert mon.read_line(1.0) == '{"return": 1}\r\n'
    b.close()
    assert mon.read_line(1.0) == "\udcff tail"
    assert mon.read_line(1.0) is None
    mon.close()


def test_diff_ignores_times_pids_and_timestamps() -> None:
    entries = tr.load(FIXTURES / "vm_runstate.jsonl")
    shifted = [dict(e, t=e["t"] + 1) for e in entries]
    for e in shifted:
        if e["dir"] == tr.DIR_EVENT:
            e["raw"] = e["raw"].replace('"seconds": 1', '"seconds": 2', 1)
        if e["dir"] == tr.DIR_NOTE and isinstance(e.get("data"), dict) and "pid" in e["data"]:
            e["data"] = dict(e["data"], pid=1)
    assert tr.diff(entries, shifted) == []
    shifted[-3] = dict(shifted[-3], raw='{"return": 1}\r\n')
    assert tr.diff(entries, shifted)


# A stand-in server that plays one monitor's side of a transcript back, to test the replay
# engine itself without QEMU: argv is [transcript, mode, *qemu argv]; mode "exact", "early"
# (an event before each greeting, QEMU's start-up race) or "drop" (omit the last reply).
FAKE_SERVER = r"""
import json, os, re, socket, sys
transcript, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
path = re.match(r"unix:([^,]+)", argv[argv.index("-qmp") + 1]).group(1)
entries = [json.loads(line) for line in open(transcript)]
starts = [e for e in entries if e.get("text") == "qemu started"]
mon = next(e["mon"] for e in starts if os.path.basename(path) in " ".join(e["data"]["argv"]))
mine = [e for e in entries if e["mon"] == mon]
replies = [i for i, e in enumerate(mine) if e["dir"] == "s2c"]
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(1)
conn = None
status = 0
for i, e in enumerate(mine):
    if e["dir"] == "note":
        if e.get("text") == "client closed the QMP socket":
            while conn.recv(4096):
                pass
            conn.close()
            conn = None
        elif e.get("text") == "EOF on QMP socket":
            conn.close()
        elif e.get("text") == "qemu exited":
            status = e["data"]["returncode"]
        continue
    if conn is None:
        conn, _ = server.accept()
        if mode == "early":
            conn.sendall(b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}\r\n')
    data = e["raw"].encode("utf-8", "surrogateescape")
    if e["dir"] == "c2s":
        got = b""
        while len(got) < len(data):
            got += conn.recv(len(data) - len(got))
    elif not (mode == "drop" and i == replies[-1]):
        conn.sendall(data)
sys.exit(status)
"""


def _fake(transcript: Path, mode: str) -> replay_engine.Command:
    def command(argv: list[str]) -> list[str]:
        return [sys.executable, "-c", FAKE_SERVER, str(transcript), mode, *argv]

    return command


@pytest.mark.parametrize("mode", ["exact", "early"])
def test_replay_engine_against_fake_server(mode: str) -> None:
    path = FIXTURES / "vm_reconnect.jsonl"
    replay_engine.replay(path.stem, tr.load(path), _fake(path, mode))


def test_replay_engine_reports_a_missing_reply() -> None:
    path = FIXTURES / "vm_reconnect.jsonl"
    with pytest.raises(replay_engine.ReplayMismatch, match="EOF; expected"):
        replay_engine.replay(path.stem, tr.load(path), _fake(path, "drop"))
