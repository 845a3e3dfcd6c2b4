"""Recorder of HMP sessions over real transports: unix/TCP sockets and stdio (tools layer).

Like ``record.py`` for QMP, a scenario is data (steps); the recorder starts processes, opens
their HMP monitors (a socket chardev, or the process's stdin/stdout through a pipe or a
pty), types exactly the given bytes and records exactly the bytes that come back, echo and
escape sequences included. The transcript uses ``transcript.py``'s JSONL format: ``c2s`` is
what was typed, ``s2c`` everything received after it until the output was quiet (or ended
with ``until``), notes mark processes, connections, EOF and exits.

    python -m migemu.tools.hmp_record SCENARIO... --out DIR [--qemu BINARY] [--check]
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from migemu.tools import transcript as tr

CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 10.0
QUIET_S = 0.25
POLL_INTERVAL_S = 0.005
ENCODING = "latin-1"  # monitor bytes <-> transcript text, one character per byte

NOTE_CONNECTED = "HMP client connected"
PORT_RE = re.compile(r"\bPORT_[A-Za-z0-9_]+")
_SOCKET_PATH_RE = re.compile(r"(?:^unix:|[,]path=)([^,]+)")
_TCP_RE = re.compile(r"^tcp:([^:,]*):([^,]+)|[,]host=([^,]+).*?[,]port=([^,]+)")

Step = dict[str, Any]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hmp_chardev(argv: list[str], index: int = 0) -> str | None:
    """The chardev text of the ``index``-th HMP monitor (``-monitor X`` or ``-mon`` with
    mode=readline, resolved through ``-chardev``), e.g. ``unix:SOCK_m,server=on``."""
    chardevs: dict[str, str] = {}
    monitors: list[str] = []
    for opt, value in zip(argv, argv[1:], strict=False):
        if opt == "-chardev":
            fields = dict(f.split("=", 1) for f in value.split(",")[1:] if "=" in f)
            chardevs[fields.get("id", "")] = value
        elif opt == "-monitor":
            monitors.append(value)
        elif opt == "-mon":
            fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
            if fields.get("mode", "readline") == "readline":
                monitors.append("@" + fields.get("chardev", value.split(",")[0]))
    if index >= len(monitors):
        return None
    spec = monitors[index]
    return chardevs.get(spec[1:]) if spec.startswith("@") else spec


def chardev_address(spec: str) -> tuple[str, str | int]:
    """("unix", path) or ("tcp", port) of a socket chardev text."""
    m = _SOCKET_PATH_RE.search(spec)
    if m:
        return "unix", m.group(1)
    m = _TCP_RE.search(spec)
    if m:
        return "tcp", m.group(2) or m.group(4)
    m = re.match(r"^telnet:([^:,]*):([^,]+)", spec)
    if m:
        return "tcp", m.group(2)
    raise ValueError(f"not a socket chardev: {spec}")


class Stream:
    """Bytes in and out of one HMP client, with deadlines and no reformatting."""

    def __init__(self, read_fd: int, write_fd: int, closer: Any = None) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.closer = closer
        self.eof = False

    @classmethod
    def connect(cls, family: str, address: str | int, proc: subprocess.Popen[bytes]) -> Stream:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            if family == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                target: Any = str(address)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                target = ("127.0.0.1", int(address))
            try:
                sock.connect(target)
                return cls(sock.fileno(), sock.fileno(), sock)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if proc.poll() is not None:
                    raise ConnectionError(f"server exited with status {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no HMP server on {address}") from None
                time.sleep(POLL_INTERVAL_S)  # another process: nothing to wait on but polling

    def send(self, data: bytes) -> None:
        while data:
            n = os.write(self.write_fd, data)
            data = data[n:]

    def read_some(self, timeout_s: float) -> bytes | None:
        """Bytes available within the timeout; b"" if none came; None at EOF."""
        if self.eof:
            return None
        ready, _, _ = select.select([self.read_fd], [], [], max(timeout_s, 0.0))
        if not ready:
            return b""
        try:
            data = os.read(self.read_fd, 65536)
        except OSError:  # a pty whose other side closed reads EIO
            data = b""
        if not data:
            self.eof = True
            return None
        return data

    def read_until(self, until: bytes | None, quiet_s: float, timeout_s: float) -> bytes:
        """Read until the data ends with ``until`` (when given) and then nothing more came
        for ``quiet_s``, or EOF."""
        got = b""
        deadline = time.monotonic() + timeout_s
        while until is not None and not got.endswith(until):
            data = self.read_some(deadline - time.monotonic())
            if data is None:
                return got
            if not data and time.monotonic() >= deadline:
                raise TimeoutError(f"output did not end with {until!r}: {got[-200:]!r}")
            got += data
        while True:
            data = self.read_some(quiet_s)
            if not data:
                return got
            got += data

    def read_exactly(self, n: int, timeout_s: float) -> bytes:
        got = b""
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            data = self.read_some(remaining)
            if data is None:
                break
            got += data
        return got

    def close(self) -> None:
        if self.closer is not None:
            self.closer.close()
        else:
            for fd in {self.read_fd, self.write_fd}:
                try:
                    os.close(fd)
                except OSError:
                    pass


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    argv: list[str]
    stdio: Stream | None = None
    clients: int = 0
    extra_fds: list[int] = field(default_factory=list)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")


class Session:
    """Processes, placeholders (paths and ports) and clients of one recording or replay."""

    def __init__(self, root: Path, qemu_argv0: list[str]) -> None:
        self.ph = tr.Placeholders(root)
        self.ports: dict[str, int] = {}
        self.argv0 = qemu_argv0
        self.procs: dict[str, Process] = {}
        self.clients: dict[str, Stream] = {}

    def substitute(self, text: str) -> str:
        text = PORT_RE.sub(lambda m: str(self.ports.setdefault(m.group(0), free_port())), text)
        return self.ph.substitute(text)

    def unsubstitute(self, text: str) -> str:
        for name, port in self.ports.items():
            text = text.replace(str(port), name)
        return self.ph.unsubstitute(text)

    def start(self, name: str, argv: list[str], stdio: str | None) -> None:
        real = [*self.argv0, *(self.substitute(a) for a in argv[1:])]
        log = tempfile.TemporaryFile()
        if stdio == "pipe":
            proc = subprocess.Popen(real, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            assert proc.stdin is not None and proc.stdout is not None
            stream = Stream(proc.stdout.fileno(), proc.stdin.fileno(), None)
            self.procs[name] = Process(proc, log, argv, stream)
        elif stdio == "pty":
            master, slave = pty.openpty()
            proc = subprocess.Popen(real, stdin=slave, stdout=slave, stderr=log)
            os.close(slave)
            self.procs[name] = Process(proc, log, argv, Stream(master, master), [master])
        else:
            proc = subprocess.Popen(real, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self.procs[name] = Process(proc, log, argv)
        if stdio is not None:
            self.clients[name] = self.procs[name].stdio  # type: ignore[assignment]

    def connect(self, client: str, proc_name: str, monitor: int = 0) -> None:
        p = self.procs[proc_name]
        spec = hmp_chardev(p.argv, monitor)
        if spec is None:
            raise ValueError(f"{proc_name}: no HMP monitor #{monitor} in argv")
        family, address = chardev_address(self.substitute(spec))
        self.clients[client] = Stream.connect(family, address, p.proc)

    def close_client(self, client: str) -> None:
        stream = self.clients.pop(client)
        if not any(p.stdio is stream for p in self.procs.values()):
            stream.close()

    def wait_exit(self, name: str) -> tuple[int, str]:
        p = self.procs.pop(name)
        returncode = p.proc.wait(EXIT_TIMEOUT_S)
        out = self.unsubstitute(p.output())
        self._release(p)
        return returncode, out

    def _release(self, p: Process) -> None:
        for stream_name in [k for k, v in self.clients.items() if v is p.stdio]:
            del self.clients[stream_name]
        if p.proc.poll() is None:
            p.proc.kill()
        p.proc.wait()
        for f in (p.proc.stdin, p.proc.stdout):
            if f is not None:
                f.close()
        for fd in p.extra_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        p.log.close()

    def close(self) -> None:
        for stream in self.clients.values():
            if not any(p.stdio is stream for p in self.procs.values()):
                stream.close()
        self.clients.clear()
        for p in self.procs.values():
            self._release(p)
        self.procs.clear()
        self.ph.cleanup()


class Recorder:
    """Runs one scenario's steps and collects transcript entries."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.entries: list[tr.Entry] = []
        self.t0 = time.monotonic()

    def _add(self, mon: str, direction: str, **members: Any) -> None:
        t = round(time.monotonic() - self.t0, 6)
        self.entries.append({"t": t, "mon": mon, "dir": direction, **members})

    def run(self, steps: list[Step]) -> list[tr.Entry]:
        try:
            for step in steps:
                getattr(self, "op_" + step["op"])(**{k: v for k, v in step.items() if k != "op"})
        finally:
            self.s.close()
        return self.entries

    def _received(self, mon: str, data: bytes) -> None:
        if data:
            raw = self.s.unsubstitute(data.decode(ENCODING))
            self._add(mon, tr.DIR_S2C, msg=None, raw=raw)

    def op_start(self, mon: str, argv: list[str], stdio: str | None = None) -> None:
        self.s.start(mon, argv, stdio)
        data: dict[str, Any] = {"pid": self.s.procs[mon].proc.pid, "argv": argv}
        if stdio is not None:
            data["stdio"] = stdio
        self._add(mon, tr.DIR_NOTE, text=tr.NOTE_STARTED, data=data)
        if stdio is not None:
            self._received(mon, self.s.clients[mon].read_until(b"(qemu) ", QUIET_S, 10))

    def op_connect(self, mon: str, proc: str, monitor: int = 0, greeting: bool = True) -> None:
        self.s.connect(mon, proc, monitor)
        self._add(mon, tr.DIR_NOTE, text=NOTE_CONNECTED, data={"proc": proc, "monitor": monitor})
        if greeting:
            self._received(mon, self.s.clients[mon].read_until(b"(qemu) ", QUIET_S, 10))

    def op_type(self, mon: str, raw: str, until: str | None = None, quiet: float = QUIET_S) -> None:
        self._add(mon, tr.DIR_C2S, msg=None, raw=raw)
        stream = self.s.clients[mon]
        stream.send(self.s.substitute(raw).encode(ENCODING))
        end = None if until is None else until.encode(ENCODING)
        self._received(mon, stream.read_until(end, quiet, REPLY_TIMEOUT_S))

    def op_read(self, mon: str, until: str | None = None, quiet: float = QUIET_S) -> None:
        """Output that comes without typing (a second client's turn, a migration's end)."""
        end = None if until is None else until.encode(ENCODING)
        self._received(mon, self.s.clients[mon].read_until(end, quiet, REPLY_TIMEOUT_S))

    def op_close(self, mon: str) -> None:
        self.s.close_client(mon)
        self._add(mon, tr.DIR_NOTE, text=tr.NOTE_CLOSED)

    def op_eof(self, mon: str) -> None:
        stream = self.s.clients[mon]
        got = b""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while (data := stream.read_some(deadline - time.monotonic())) is not None:
            if not data and time.monotonic() >= deadline:
                raise TimeoutError(f"{mon}: no EOF")
            got += data
        self._received(mon, got)
        self._add(mon, tr.DIR_NOTE, text=tr.NOTE_EOF)

    def op_exit(self, mon: str) -> None:
        pid = self.s.procs[mon].proc.pid
        returncode, output = self.s.wait_exit(mon)
        data = {"pid": pid, "returncode": returncode, "stdout+stderr": output}
        self._add(mon, tr.DIR_NOTE, text=tr.NOTE_EXITED, data=data)


# --- scenarios --------------------------------------------------------------------------------

BASE = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]
ENTER = "\r"
PROMPT = "(qemu) "


def _cmd(mon: str, line: str, until: str | None = PROMPT) -> Step:
    return {"op": "type", "mon": mon, "raw": line + ENTER, "until": until}


def _key(mon: str, raw: str) -> Step:
    return {"op": "type", "mon": mon, "raw": raw}


def _commands(mon: str) -> list[Step]:
    """Commands whose text does not depend on the transport."""
    lines = [
        "info status",
        "info name",
        "info version",
        "info migrate",
        "info migrate_capabilities",
        "info migrate_parameters",
        "help migrate",
        "help c",
        "help info status",
        "help info foo",
        "help foo",
        "? help",
        "info",
        "info status extra",
        "info no-such-thing",
        "no-such-command",
        "  info   status  ",
        "migrate",
        "migrate -x foo",
        "migrate_cancel x",
        "stop x",
        "s x",
        "migrate_continue",
        "migrate_continue foo",
        "migrate_continue pre-switchover",
        "migrate_incoming tcp:127.0.0.1:0",
        "migrate_set_parameter max-bandwidth 16M",
        "migrate_set_parameter multifd-channels 0",
        "migrate_set_parameter multifd-channels 256",
        "migrate_set_parameter multifd-compression lz4",
        "migrate_set_parameter foo 1",
        "migrate_set_parameter downtime-limit",
        "migrate_set_parameter max-bandwidth 1 2",
        "migrate_set_capability events on",
        "migrate_set_capability multifd maybe",
        "migrate_set_capability foo on",
        "info migrate_parameters",
        "info migrate_capabilities",
        "stop",
        "info status",
        "c",
        "info status",
        "migrate foo:bar",
        "migrate -d foo:bar",
        "info migrate",
    ]
    return [_cmd(mon, line) for line in lines]


def _editing(mon: str) -> list[Step]:
    """Line editing, history and completion."""
    keys = [
        "a",
        "b",
        "c",
        "\x7f",
        "\x1b[D",
        "X",
        "\x01",
        "\x05",
        "\x1b[1~",
        "\x1b[3~",
        "\x04",
        "\x1b[4~",
        "\x1bOH",
        "\x1bOF",
        "\x15",
        "\x0b",
        "\x1bx",
        "\x9bC",
        "\x17",
        "\x0c",
    ]
    steps = [_key(mon, k) for k in keys]
    steps.append(_cmd(mon, ""))
    steps += [_cmd(mon, "info status"), _cmd(mon, "info name"), _cmd(mon, "info status")]
    steps += [_key(mon, k) for k in ("\x1b[A", "\x1b[A", "\x1b[A", "\x1b[B", "\x10", "\x0e")]
    steps += [_key(mon, k) for k in ("\x1b[B", "\x1b[B")]
    steps += [_key(mon, "mig\t"), _key(mon, "\t"), _key(mon, "_set_c\t"), _key(mon, "ev\t")]
    steps.append(_key(mon, "o\t"))
    steps.append(_cmd(mon, "n"))
    steps += [_key(mon, "info mig\t"), _key(mon, "rate_p\t")]
    steps.append(_cmd(mon, ""))
    steps += [_key(mon, "migrate_set_parameter multifd-c\t"), _key(mon, "\x01\x0b\x05\x17\x17")]
    steps.append(_cmd(mon, "", until=PROMPT))
    steps.append(_cmd(mon, "help mig\t"))
    return steps


def hmp_unix() -> list[Step]:
    argv = [*BASE, "-name", "hmp-guest", "-monitor", "unix:SOCK_hmp_unix,server=on,wait=off"]
    steps: list[Step] = [
        {"op": "start", "mon": "vm", "argv": argv},
        {"op": "connect", "mon": "c1", "proc": "vm"},
    ]
    steps += _editing("c1")
    steps += _commands("c1")
    steps.append(_cmd("c1", "quit", until=None))
    steps += [{"op": "eof", "mon": "c1"}, {"op": "exit", "mon": "vm"}]
    return steps


def hmp_clients() -> list[Step]:
    argv = [*BASE, "-monitor", "unix:SOCK_hmp_clients,server=on,wait=off"]
    return [
        {"op": "start", "mon": "vm", "argv": argv},
        {"op": "connect", "mon": "c1", "proc": "vm"},
        {"op": "connect", "mon": "c2", "proc": "vm", "greeting": False},
        {"op": "type", "mon": "c2", "raw": "info status\r"},
        _cmd("c1", "stop"),
        _key("c1", "info st"),
        {"op": "close", "mon": "c1"},
        {"op": "read", "mon": "c2", "until": "VM status: paused\r\n(qemu) "},
        _cmd("c2", "c"),
        {"op": "close", "mon": "c2"},
        {"op": "connect", "mon": "c3", "proc": "vm"},
        _cmd("c3", "info status"),
        _cmd("c3", "q", until=None),
        {"op": "eof", "mon": "c3"},
        {"op": "exit", "mon": "vm"},
    ]


def hmp_mon_tcp() -> list[Step]:
    argv = [
        *BASE,
        "-chardev",
        "socket,id=hmp0,host=127.0.0.1,port=PORT_hmp,server=on,wait=off",
        "-mon",
        "chardev=hmp0,mode=readline",
        "-monitor",
        "unix:SOCK_hmp_mon,server=on,wait=off",
    ]
    return [
        {"op": "start", "mon": "vm", "argv": argv},
        {"op": "connect", "mon": "tcp", "proc": "vm", "monitor": 0},
        {"op": "connect", "mon": "unix", "proc": "vm", "monitor": 1},
        _cmd("tcp", "stop"),
        _cmd("unix", "info status"),
        _key("tcp", "info st"),
        _key("unix", "\x1b[A"),
        _cmd("tcp", "atus"),
        _cmd("unix", "migrate_set_parameter multifd-channels 7"),
        _cmd("tcp", "info migrate_parameters"),
        _cmd("unix", "quit", until=None),
        {"op": "eof", "mon": "tcp"},
        {"op": "eof", "mon": "unix"},
        {"op": "exit", "mon": "vm"},
    ]


def hmp_stdio(kind: str) -> list[Step]:
    argv = [*BASE, "-monitor", "stdio"]
    steps: list[Step] = [{"op": "start", "mon": "vm", "argv": argv, "stdio": kind}]
    steps += [_key("vm", k) for k in ("ab", "\x7f", "\x1b[D", "\x1b[A")]
    steps.append(_cmd("vm", ""))
    steps += [_cmd("vm", line) for line in ("info status", "help stop", "stop", "info status")]
    steps += [_key("vm", "\x1b[A"), _key("vm", "\x1b[A"), _cmd("vm", "migrate_cancel")]
    steps.append(_cmd("vm", "quit", until=None))
    return [*steps, {"op": "eof", "mon": "vm"}, {"op": "exit", "mon": "vm"}]


def hmp_telnet() -> list[Step]:
    argv = [*BASE, "-monitor", "telnet:127.0.0.1:PORT_telnet,server=on,wait=off"]
    keys = ["\xff\xfd\x01", "\xff\xfb\x03a", "\xff\xffb", "\r\x00", "\xff\xf3", "s\r\n"]
    keys += ["\xff\xfa\x18\x01\xff\xf0y", "\r", "info status\r"]
    steps: list[Step] = [
        {"op": "start", "mon": "vm", "argv": argv},
        {"op": "connect", "mon": "c", "proc": "vm"},
    ]
    steps += [_key("c", k) for k in keys]
    steps.append(_cmd("c", "quit", until=None))
    return [*steps, {"op": "eof", "mon": "c"}, {"op": "exit", "mon": "vm"}]


def hmp_stdio_mux() -> list[Step]:
    """``-serial mon:stdio``: the mux's Ctrl-A escapes in front of the monitor."""
    argv = [*BASE, "-serial", "mon:stdio"]
    steps: list[Step] = [{"op": "start", "mon": "vm", "argv": argv, "stdio": "pipe"}]
    steps.append(_cmd("vm", "info status"))
    keys = ["\x01c", "\x01h", "ab\x01\x01X", "\r", "\x01?", "\x01b", "\x01z", "c\r"]
    steps += [_key("vm", k) for k in keys]
    steps.append(_key("vm", "\x01x"))
    return [*steps, {"op": "eof", "mon": "vm"}, {"op": "exit", "mon": "vm"}]


def hmp_complete() -> list[Step]:
    """Tab completion: commands with aliases, info and help sub-tables, argument values."""
    argv = [*BASE, "-monitor", "unix:SOCK_hmp_complete,server=on,wait=off"]
    steps: list[Step] = [
        {"op": "start", "mon": "vm", "argv": argv},
        {"op": "connect", "mon": "c", "proc": "vm"},
    ]
    for typed in [
        "",
        "s",
        "d",
        "info ",
        "help info st",
        'help "inf',
        "migrate_set_parameter b",
        "migrate_set_parameter ",
        "migrate_set_capability events ",
        "migrate_set_capability x-",
        "qo",
        "info migrate x",
        "   ",
        "migrate -d ",
    ]:
        steps += [_key("c", typed + "\t"), _cmd("c", "")]
    steps.append(_cmd("c", "quit", until=None))
    return [*steps, {"op": "eof", "mon": "c"}, {"op": "exit", "mon": "vm"}]


SCENARIOS: dict[str, list[Step]] = {
    "hmp_unix": hmp_unix(),
    "hmp_clients": hmp_clients(),
    "hmp_mon_tcp": hmp_mon_tcp(),
    "hmp_stdio_pipe": hmp_stdio("pipe"),
    "hmp_stdio_pty": hmp_stdio("pty"),
    "hmp_telnet": hmp_telnet(),
    "hmp_stdio_mux": hmp_stdio_mux(),
    "hmp_complete": hmp_complete(),
}


def record(steps: list[Step], argv0: list[str]) -> list[tr.Entry]:
    with tempfile.TemporaryDirectory(prefix="hrec-") as root:
        return Recorder(Session(Path(root), argv0)).run(steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migemu.tools.hmp_record", description=__doc__)
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="a name or 'all'")
    parser.add_argument("--out", required=True, type=Path, help="directory for NAME.jsonl")
    parser.add_argument("--qemu", default="qemu-system-x86_64", help="binary to record")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in names:
        entries = record(SCENARIOS[name], [args.qemu])
        status |= tr.save_or_check(args.out / f"{name}.jsonl", entries, args.check)
    return status


if __name__ == "__main__":
    sys.exit(main())
