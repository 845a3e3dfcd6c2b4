"""The shared ``i_hmp`` transcript (HMP during real QEMU migrations) replayed on migemu.

Every HMP command line of the recording is sent, in the recorded order, to the same monitor
of migemu processes started with the recorded argv (IMAGE_256M is a sparse file here: the
lines printed are the same, their counts are masked anyway), while real migrations run
between them. The timing of a migration is not
replayable, so the replay synchronises instead: before a command whose recorded reply shows a
migration status or a VM status, it waits (with a deadline) until migemu is in that state;
``query-migrate`` polls of the recording become waits for their terminal statuses. Replies
must then be equal line for line, with the numbers that depend on timing masked (times,
throughput, page and byte counts) and the TCP ports mapped to this run's.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from migemu.emulator.machine import PACKAGE
from migemu.tools import transcript as tr
from migemu.tools.record import MonitorSocket

SHARED = Path(__file__).parents[2].parent / "shared" / "reference" / "transcripts"
I_HMP = SHARED / "i_hmp.jsonl"
DEADLINE_S = 30.0
POLL_S = 0.01
HMC = "human-monitor-command"
TERMINAL = ("completed", "failed", "cancelled")
# ``info migrate`` lines whose numbers depend on timing; every other number must be equal.
VOLATILE = (
    "total time",
    "expected downtime",
    "downtime",
    "setup",
    "transferred ram",
    "throughput",
    "remaining ram",
    "duplicate",
    "normal",
    "normal bytes",
    "dirty sync count",
    "multifd bytes",
    "pages-per-second",
    "precopy ram",
    "downtime ram",
)
_PORT_RE = re.compile(r"127\.0\.0\.1:(\d+)")


def mask(text: str) -> str:
    """``text`` with the digits of volatile lines replaced by ``N``."""
    out = []
    for line in text.split("\r\n"):
        key = line.split(":", 1)[0]
        out.append(re.sub(r"\d+", "N", line) if key in VOLATILE else line)
    return "\r\n".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Instance:
    def __init__(self, proc: subprocess.Popen[bytes], sock: MonitorSocket) -> None:
        self.proc = proc
        self.sock = sock

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.sock.send(json.dumps(msg))
        while True:
            line = self.sock.read_line(DEADLINE_S)
            if line is None:
                return None  # quit: the reply may race the close
            reply = json.loads(line)
            if "event" not in reply:
                return reply

    def wait(self, what: str, want: str) -> None:
        """Poll query-migrate (status) or query-status (HMP text) until ``want``."""
        end = time.monotonic() + DEADLINE_S
        while True:
            if what == "status":
                have = self.cmd("query-migrate")["return"].get("status")
            else:
                have = self.cmd(HMC, {"command-line": "info status"})["return"]
            if have == want:
                return
            if time.monotonic() > end:
                raise AssertionError(f"still {have!r}, waited for {want!r}")
            time.sleep(POLL_S)  # another process's state: nothing to wait on but polling


class HMPReplay:
    def __init__(self, root: Path) -> None:
        self.ph = tr.Placeholders(root)
        self.instances: dict[str, Instance] = {}
        self.ports: dict[str, str] = {}
        self.compared = 0

    def start(self, mon: str, argv: list[str]) -> None:
        real = [sys.executable, "-m", "migemu", *self.ph.substitute_argv(argv)[1:]]
        proc = subprocess.Popen(real, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = self.ph.substitute(tr.qmp_socket(argv) or "")
        sock = MonitorSocket.connect(path, DEADLINE_S, process=proc)
        inst = Instance(proc, sock)
        sock.read_line(DEADLINE_S)
        inst.cmd("qmp_capabilities")
        self.instances[mon] = inst

    def port_text(self, text: str, learn: bool = False) -> str:
        def sub(m: re.Match[str]) -> str:
            recorded = m.group(1)
            if recorded not in self.ports:
                self.ports[recorded] = "0" if learn else str(free_port())
            return f"127.0.0.1:{self.ports[recorded]}"

        return _PORT_RE.sub(sub, text)

    def hmp(self, mon: str, line: str, recorded: str | None) -> None:
        inst = self.instances[mon]
        if recorded is not None:
            status = re.search(r"^Migration status: (\S+)", recorded, re.M)
            if status:
                inst.wait("status", status.group(1))
            if recorded.startswith("VM status: "):
                inst.wait("info status", recorded)
        incoming = line.startswith("migrate_incoming ")
        reply = inst.cmd(HMC, {"command-line": self.port_text(line, learn=incoming)})
        if incoming:
            port = inst.cmd("query-migrate")["return"]["socket-address"][0]["port"]
            recorded_port = _PORT_RE.search(line).group(1)  # type: ignore[union-attr]
            self.ports[recorded_port] = str(port)
        if recorded is None:
            return
        actual = tr.as_recorded_package(reply["return"], PACKAGE)
        expected = self.port_text(recorded)
        assert mask(actual) == mask(expected), f"{mon}: {line!r}\n{actual}\n!=\n{expected}"
        self.compared += 1

    def close(self) -> None:
        for inst in self.instances.values():
            inst.sock.close()
            if inst.proc.poll() is None:
                inst.proc.kill()
            inst.proc.wait()
        self.ph.cleanup()


@pytest.mark.skipif(not I_HMP.exists(), reason="shared i_hmp transcript absent")
def test_i_hmp_on_migemu() -> None:
    entries = tr.load(I_HMP)
    root = Path(tempfile.mkdtemp(prefix="ihmp-"))
    replay = HMPReplay(root)
    try:
        for i, entry in enumerate(entries):
            mon, direction = entry["mon"], entry["dir"]
            if direction == tr.DIR_NOTE and entry.get("text") == tr.NOTE_STARTED:
                replay.start(mon, entry["data"]["argv"])
            elif direction == tr.DIR_NOTE and entry.get("text") == tr.NOTE_EXITED:
                assert replay.instances[mon].proc.wait(DEADLINE_S) == 0
            elif direction == tr.DIR_C2S:
                msg = entry["msg"]
                reply = _reply(entries, i)
                if msg["execute"] == HMC:
                    text = reply["return"] if reply is not None else None
                    replay.hmp(mon, msg["arguments"]["command-line"], text)
                elif msg["execute"] == "query-migrate" and reply is not None:
                    status = reply["return"].get("status")
                    if status in TERMINAL:
                        replay.instances[mon].wait("status", status)
                elif msg["execute"] == "quit":
                    replay.instances[mon].cmd("quit")
        assert replay.compared >= 60
    finally:
        replay.close()
        shutil.rmtree(root, ignore_errors=True)


def _reply(entries: list[tr.Entry], index: int) -> dict[str, Any] | None:
    """The recorded reply (not an event) to the c2s entry at ``index``."""
    mon = entries[index]["mon"]
    for e in entries[index + 1 :]:
        if e["mon"] == mon and e["dir"] == tr.DIR_S2C:
            msg: dict[str, Any] = e["msg"]
            return msg
    return None
