"""Replay of recorded QMP transcripts against a binary under test (end-to-end test layer).

A transcript (``migemu/tools/transcript.py``) says which processes were started with which
argv, what the client sent on each monitor and what came back. Replaying it starts the
binary under test with the same argv (placeholders turned into fresh temp paths, argv[0]
replaced by the binary), sends every ``c2s`` text byte for byte, and requires every
``s2c``/``event`` line back in order, equal byte for byte except for the values of event
timestamps. ``EOF on QMP socket`` and ``qemu exited`` notes are checked too. Timing between
monitors is not compared: each monitor's stream is checked in its own order.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from migemu.emulator.machine import PACKAGE
from migemu.tools import transcript as tr
from migemu.tools.record import MonitorSocket

READ_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 10.0
# QEMU prints nothing on these sessions; an emulator that logs to stderr is distinguishable.
CHECK_PROCESS_OUTPUT = True

Command = Callable[[list[str]], list[str]]


class ReplayMismatch(AssertionError):
    """The binary under test did not behave as the recording says."""


@dataclass
class _Instance:
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    argv: list[str]
    mon: MonitorSocket | None = None
    last_sent: list[str] = field(default_factory=list)
    early_events: list[str] = field(default_factory=list)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")


class Replay:
    """One replay of one transcript; use :func:`replay` unless you need the pieces."""

    def __init__(self, name: str, entries: list[tr.Entry], command: Command) -> None:
        self.name = name
        self.entries = entries
        self.command = command
        self.root = Path(tempfile.mkdtemp(prefix="replay-"))
        self.ph = tr.Placeholders(self.root)
        self.instances: dict[str, _Instance] = {}

    def fail(self, index: int, mon: str, why: str) -> ReplayMismatch:
        inst = self.instances.get(mon)
        context = ""
        if inst is not None:
            if inst.last_sent:
                context += f"\n  last sent on {mon}: {inst.last_sent[-1]!r}"
            if inst.proc.poll() is not None:
                context += f"\n  process exited with status {inst.proc.returncode}"
            out = self.ph.unsubstitute(inst.output())
            if out:
                context += f"\n  process output:\n{out}"
        return ReplayMismatch(f"{self.name}: entry {index} ({mon}): {why}{context}")

    def run(self) -> None:
        try:
            for index, entry in enumerate(self.entries):
                self.step(index, entry)
        finally:
            self.close()

    def step(self, index: int, entry: tr.Entry) -> None:
        mon, direction = entry["mon"], entry["dir"]
        if direction == tr.DIR_NOTE:
            text = entry.get("text")
            if text == tr.NOTE_STARTED:
                self.start(mon, entry["data"]["argv"])
            elif text == tr.NOTE_EOF:
                self.expect_eof(index, mon)
            elif text == tr.NOTE_CLOSED:
                self.disconnect(mon)
            elif text == tr.NOTE_EXITED:
                self.expect_exit(index, mon, entry["data"])
            return
        monitor = self.monitor(index, mon)
        inst = self.instances[mon]
        if direction == tr.DIR_C2S:
            raw = self.ph.substitute(entry["raw"])
            inst.last_sent.append(raw)
            try:
                monitor.send(raw)
            except OSError as err:
                raise self.fail(index, mon, f"send failed: {err!r}") from err
            return
        while True:
            try:
                line = monitor.read_line(READ_TIMEOUT_S)
            except TimeoutError:
                raise self.fail(index, mon, f"no reply; expected {entry['raw']!r}") from None
            if line is None:
                raise self.fail(index, mon, f"EOF; expected {entry['raw']!r}")
            actual = tr.as_recorded_package(self.ph.unsubstitute(line), PACKAGE)
            # QEMU's start-up race (see tr.NOTE_EARLY_EVENT): tolerated, never required.
            if not (tr.is_greeting(entry["raw"]) and tr.is_event(actual)):
                break
            inst.early_events.append(actual)
        expected = entry["raw"]
        if direction == tr.DIR_EVENT:
            actual, expected = tr.mask_timestamps(actual), tr.mask_timestamps(expected)
        if actual != expected:
            raise self.fail(index, mon, tr.describe_mismatch(expected, actual))

    def start(self, mon: str, argv: list[str]) -> None:
        real = self.command(self.ph.substitute_argv(argv))
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(real, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.instances[mon] = _Instance(proc, log, argv)

    def monitor(self, index: int, mon: str) -> MonitorSocket:
        inst = self.instances.get(mon)
        if inst is None:
            raise self.fail(index, mon, "traffic on a monitor whose process was never started")
        if inst.mon is None:
            path = tr.qmp_socket(inst.argv)
            if path is None:
                raise self.fail(index, mon, "argv has no -qmp unix: option")
            try:
                inst.mon = MonitorSocket.connect(
                    self.ph.substitute(path), CONNECT_TIMEOUT_S, process=inst.proc
                )
            except (TimeoutError, ConnectionError) as err:
                raise self.fail(index, mon, f"cannot connect: {err}") from err
        return inst.mon

    def expect_eof(self, index: int, mon: str) -> None:
        monitor = self.monitor(index, mon)
        try:
            line = monitor.read_line(READ_TIMEOUT_S)
        except TimeoutError:
            raise self.fail(index, mon, "the server did not close the connection") from None
        if line is not None:
            raise self.fail(index, mon, f"expected EOF, got {self.ph.unsubstitute(line)!r}")
        self.disconnect(mon)

    def disconnect(self, mon: str) -> None:
        """The client hung up; the next traffic on ``mon`` connects again."""
        inst = self.instances[mon]
        if inst.mon is not None:
            inst.mon.close()
            inst.mon = None

    def expect_exit(self, index: int, mon: str, data: dict[str, object]) -> None:
        inst = self.instances[mon]
        try:
            returncode = inst.proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise self.fail(index, mon, "the process did not exit") from None
        if returncode != data["returncode"]:
            raise self.fail(index, mon, f"exit status {returncode}, expected {data['returncode']}")
        output = self.ph.unsubstitute(inst.output())
        if CHECK_PROCESS_OUTPUT and output != data.get("stdout+stderr", ""):
            raise self.fail(
                index, mon, tr.describe_mismatch(str(data.get("stdout+stderr", "")), output)
            )

    def close(self) -> None:
        for inst in self.instances.values():
            if inst.mon is not None:
                inst.mon.close()
            if inst.proc.poll() is None:
                inst.proc.kill()
            inst.proc.wait()
            inst.log.close()
        self.instances.clear()
        self.ph.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


def replay(name: str, entries: list[tr.Entry], command: Command) -> float:
    """Replay ``entries`` with processes built by ``command(argv)``; raise
    :class:`ReplayMismatch` at the first difference. Returns the elapsed seconds."""
    t0 = time.monotonic()
    Replay(name, entries, command).run()
    return time.monotonic() - t0
