"""Recorder of QMP sessions with a real QEMU (tools layer).

A scenario is data: a name and a list of steps (dicts, see ``migemu/tools/scenarios/``).
The recorder starts processes from argvs with path placeholders, connects raw unix sockets
to their QMP monitors, sends exactly the given bytes (malformed JSON included), reads back
whole CRLF lines without reformatting anything, and writes a transcript (see
``transcript.py``) with real paths turned back into placeholders.

    python -m migemu.tools.record SCENARIO... --out DIR [--qemu BINARY] [--check]

SCENARIO is a name from ``migemu.tools.scenarios`` (``all`` for every one) or a JSON file
holding ``{"name": ..., "steps": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from migemu.tools import transcript as tr

CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.005
READ_CHUNK_BYTES = 65536

Step = dict[str, Any]


class MonitorSocket:
    """A unix-socket QMP connection that reads whole lines, byte for byte."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self.eof = False

    @classmethod
    def connect(
        cls,
        path: str,
        timeout_s: float = CONNECT_TIMEOUT_S,
        process: subprocess.Popen[bytes] | None = None,
    ) -> MonitorSocket:
        """Connect, retrying until the server has created and bound its socket; give up at
        once if ``process`` (the server) has exited."""
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if process is not None and process.poll() is not None:
                    raise ConnectionError(
                        f"server exited with status {process.returncode} before {path} appeared"
                    ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no QMP server on {path} after {timeout_s}s") from None
                # The server is a separate process: there is nothing to wait on but the path.
                time.sleep(POLL_INTERVAL_S)

    def send(self, raw: str) -> None:
        self._sock.sendall(raw.encode("utf-8", "surrogateescape"))

    def _fill(self, timeout_s: float) -> bool:
        """Read more bytes; False when nothing arrived within the timeout."""
        self._sock.settimeout(max(timeout_s, 0.0001))
        try:
            data = self._sock.recv(READ_CHUNK_BYTES)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self._buf += data
        return True

    def read_line(self, timeout_s: float) -> str | None:
        """The next line including its CRLF; None at EOF; TimeoutError when none came.

        Bytes left without a newline at EOF are returned as a last (partial) line.
        """
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            if self.eof:
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line.decode("utf-8", "surrogateescape")
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._fill(remaining):
                raise TimeoutError("no complete line from the monitor")
        line, _, self._buf = self._buf.partition(b"\n")
        return (line + b"\n").decode("utf-8", "surrogateescape")

    def close(self) -> None:
        self._sock.close()


class Recorder:
    """Runs the steps of one scenario and collects transcript entries."""

    def __init__(self, name: str, qemu: str, root: Path) -> None:
        self.name = name
        self.qemu = qemu
        self.ph = tr.Placeholders(root)
        self.entries: list[tr.Entry] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.mons: dict[str, MonitorSocket] = {}
        self.argvs: dict[str, list[str]] = {}
        self.t0 = time.monotonic()

    # -- entries

    def _add(self, mon: str, direction: str, **members: Any) -> None:
        t = round(time.monotonic() - self.t0, 6)
        self.entries.append({"t": t, "mon": mon, "dir": direction, **members})

    def note(self, mon: str, text: str, data: dict[str, Any] | None = None) -> None:
        if data is None:
            self._add(mon, tr.DIR_NOTE, text=text)
        else:
            self._add(mon, tr.DIR_NOTE, text=text, data=data)

    def _received(self, mon: str, line: str) -> str:
        raw = self.ph.unsubstitute(line)
        direction = tr.DIR_EVENT if tr.is_event(raw) else tr.DIR_S2C
        self._add(mon, direction, msg=tr.parse_msg(raw), raw=raw)
        return direction

    # -- steps

    def run(self, steps: list[Step]) -> None:
        try:
            for step in steps:
                getattr(self, "op_" + step["op"])(**{k: v for k, v in step.items() if k != "op"})
        finally:
            self.shutdown()

    def op_start(self, mon: str, argv: list[str]) -> None:
        real = self.ph.substitute_argv(argv)
        real[0] = self.qemu
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(real, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs[mon], self.logs[mon], self.argvs[mon] = proc, log, argv
        self.note(mon, tr.NOTE_STARTED, {"pid": proc.pid, "argv": argv})

    def op_connect(self, mon: str, greeting: bool = True) -> None:
        path = tr.qmp_socket(self.argvs[mon])
        if path is None:
            raise ValueError(f"{mon}: argv has no -qmp unix: option")
        sock = MonitorSocket.connect(self.ph.substitute(path), process=self.procs[mon])
        self.mons[mon] = sock
        if not greeting:
            return
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            line = sock.read_line(deadline - time.monotonic())
            if line is None:
                raise EOFError(f"{mon}: EOF before the greeting")
            raw = self.ph.unsubstitute(line)
            if tr.is_greeting(raw) or not tr.is_event(raw):
                self._received(mon, line)
                return
            self.note(mon, tr.NOTE_EARLY_EVENT, {"raw": raw})

    def op_send(
        self, mon: str, raw: str, replies: int = 1, events: int = 0, quiet: float = 0.0
    ) -> None:
        self._add(mon, tr.DIR_C2S, msg=tr.parse_msg(raw), raw=raw)
        self.mons[mon].send(self.ph.substitute(raw))
        self._read(mon, replies=replies, events=events, quiet=quiet)

    def _read(self, mon: str, replies: int, events: int, quiet: float) -> None:
        """Read until ``replies`` non-event lines and ``events`` events came, then (if
        ``quiet``) until nothing more arrives for that many seconds."""
        sock = self.mons[mon]
        got = {tr.DIR_S2C: 0, tr.DIR_EVENT: 0}
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while got[tr.DIR_S2C] < replies or got[tr.DIR_EVENT] < events:
            line = sock.read_line(deadline - time.monotonic())
            if line is None:
                raise EOFError(f"{mon}: EOF while waiting for {replies} replies")
            got[self._received(mon, line)] += 1
        while quiet > 0:
            try:
                line = sock.read_line(quiet)
            except TimeoutError:
                break
            if line is None:
                break
            self._received(mon, line)

    def op_eof(self, mon: str) -> None:
        """Read (and record) until the server closes the connection."""
        sock = self.mons[mon]
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while (line := sock.read_line(deadline - time.monotonic())) is not None:
            self._received(mon, line)
        self.note(mon, tr.NOTE_EOF)
        sock.close()
        del self.mons[mon]

    def op_close(self, mon: str) -> None:
        self.mons.pop(mon).close()
        self.note(mon, tr.NOTE_CLOSED)

    def op_exit(self, mon: str) -> None:
        """Wait for the process to exit by itself and note its status and output."""
        proc = self.procs.pop(mon)
        returncode = proc.wait(EXIT_TIMEOUT_S)
        log = self.logs.pop(mon)
        log.seek(0)
        output = self.ph.unsubstitute(log.read().decode("utf-8", "replace"))
        log.close()
        data = {"pid": proc.pid, "returncode": returncode, "stdout+stderr": output}
        self.note(mon, tr.NOTE_EXITED, data)

    def op_note(self, text: str, mon: str = "-") -> None:
        self.note(mon, text)

    def shutdown(self) -> None:
        for sock in self.mons.values():
            sock.close()
        self.mons.clear()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs.clear()
        for log in self.logs.values():
            log.close()
        self.logs.clear()
        self.ph.cleanup()


def record(name: str, steps: list[Step], qemu: str = "qemu-system-x86_64") -> list[tr.Entry]:
    """Run one scenario against ``qemu`` and return its transcript entries."""
    # A short root keeps unix socket paths under the 108-byte sun_path limit.
    with tempfile.TemporaryDirectory(prefix="rec-") as root:
        rec = Recorder(name, qemu, Path(root))
        rec.run(steps)
        return rec.entries


def load_scenario(spec: str) -> list[tuple[str, list[Step]]]:
    """A scenario name (or ``all``) from the package, or a JSON file."""
    from migemu.tools.scenarios import SCENARIOS

    if spec == "all":
        return list(SCENARIOS.items())
    if spec in SCENARIOS:
        return [(spec, SCENARIOS[spec])]
    path = Path(spec)
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        return [(data["name"], data["steps"])]
    raise SystemExit(f"unknown scenario {spec!r}; known: {', '.join(SCENARIOS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migemu.tools.record", description=__doc__)
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    parser.add_argument("--out", required=True, type=Path, help="directory for NAME.jsonl")
    parser.add_argument("--qemu", default="qemu-system-x86_64", help="binary to record")
    parser.add_argument(
        "--check",
        action="store_true",
        help="record again and compare with the transcripts in --out instead of writing",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for spec in args.scenarios:
        for name, steps in load_scenario(spec):
            entries = record(name, steps, args.qemu)
            status |= tr.save_or_check(args.out / f"{name}.jsonl", entries, args.check)
    return status


if __name__ == "__main__":
    sys.exit(main())
