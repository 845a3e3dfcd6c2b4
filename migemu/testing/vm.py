"""One VM process under test: migemu (or real QEMU 7.2) started from a Python call.

Test-library layer (above the emulator; it runs the emulator only as a child process). A
``VM`` is configured in its constructor, ``start()``-ed once, driven through ``.qmp`` (a
connected, negotiated ``qemu.qmp.QMPClient``) and ended by ``close()``, which stops the
process by PID and removes every socket and file it made. It records every QMP event (the
``events`` list) and offers them as an async iterator. Every wait has a deadline and says, when
it passes, what state the VM or its migration was in. Like QEMU's migration qtest, nothing
sleeps for a fixed time: waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient

from migemu.testing.errors import (
    MigrationFailedError,
    MigrationStatusError,
    MigrationTimeoutError,
    UnsupportedByQEMU,
    VMExitedError,
    VMStartError,
    VMStateError,
    describe,
)

PROFILES = ("7.2",)
BACKENDS = ("migemu", "qemu")
DEFAULT_TIMEOUT_S = 60.0
POLL_S = 0.01
QEMU_BINARY = "qemu-system-x86_64"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the NUL
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(
            f"unknown migemu profile {profile!r}: this migemu emulates "
            + ", ".join(f"QEMU {p} (profile={p!r})" for p in PROFILES)
        )
    return profile


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (backends: {', '.join(BACKENDS)})")
    return backend


def memory_mib(memory: str | int) -> int:
    """``"256M"``, ``"1G"``, ``"512"`` (MiB, as ``-m``) or an int of bytes -> MiB."""
    if isinstance(memory, int):
        size = memory
    else:
        text = memory.strip().upper().removesuffix("B")
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        unit = units.get(text[-1:], 0)
        digits = text[:-1] if unit else text
        if not digits.isdigit():
            raise ValueError(f"memory={memory!r}: expected a size such as '256M' or '1G'")
        size = int(digits) * (unit or 1 << 20)
    if size <= 0 or size % (1 << 20):
        raise ValueError(f"memory={memory!r}: must be a positive whole number of MiB")
    return size >> 20


def migemu_command() -> list[str]:
    """The migemu program of this Python (the same package the test imports)."""
    return [sys.executable, "-m", "migemu"]


def qemu_command() -> list[str]:
    """Real QEMU 7.2 found on PATH, without default devices or a display."""
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise VMStartError(f"{QEMU_BINARY} not found on PATH (needed for backend='qemu')")
    return [path, "-nodefaults", "-display", "none"]


def _check_guest(guest: str | None, backend: str) -> None:
    if guest is None:
        return
    from migemu.emulator.guest.workload import WorkloadSpecError, parse_workload_spec

    try:
        parse_workload_spec(guest)
    except WorkloadSpecError as err:
        raise ValueError(f"guest={guest!r}: {err}") from err
    if backend == "qemu" and guest.split(",")[0].strip() != "idle":
        raise UnsupportedByQEMU(f"guest={guest!r} is a migemu workload; real QEMU runs no guest")


def check_fault(spec: str) -> str:
    """Validate a fault spec as migemu will (``FaultSpecError``, a ``ValueError``, if bad)."""
    from migemu.emulator.migration.faults import parse_spec

    parse_spec(spec)
    return spec


async def connect_when_ready(
    qmp: QMPClient,
    sock: Path,
    proc: subprocess.Popen[bytes],
    log: Callable[[], str] = lambda: "",
    deadline_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Connect ``qmp`` to ``sock`` once ``proc`` listens there (the socket file exists a
    moment before listen()); ``VMStartError`` if it exits first or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        if sock.exists():
            try:
                await qmp.connect(str(sock))
                return
            except ConnectError:
                pass
        if proc.poll() is not None:
            raise VMStartError(
                f"pid {proc.pid} exited with status {proc.returncode} before its QMP socket"
                f" {sock} was ready: {log().strip()[-2000:]}"
            )
        if time.monotonic() > end:
            raise VMStartError(f"QMP socket {sock} not ready after {deadline_s:g} s: {log()}")
        await asyncio.sleep(POLL_S)


class QMP(QMPClient):
    """A ``QMPClient`` that knows its backend: an ``x-migemu-*`` command sent to real QEMU
    raises ``UnsupportedByQEMU`` (a skip under the pytest plugin) instead of failing."""

    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name)
        self.backend = backend

    async def execute(
        self, cmd: str, arguments: Mapping[str, object] | None = None, oob: bool = False
    ) -> object:
        if self.backend == "qemu" and cmd.startswith("x-migemu-"):
            raise UnsupportedByQEMU(f"{cmd} is a migemu-only command")
        return await super().execute(cmd, arguments, oob)


class EventLog(list[dict[str, Any]]):
    """Every QMP event a VM sent, in order (a list), that is also an async iterator:
    ``async for ev in vm.events`` yields them from the first one and then as they arrive
    (``vm.iter_events(...)`` filters by name and starts from now)."""

    def __init__(self, vm: VM) -> None:
        super().__init__()
        self._vm = vm

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._vm.iter_events(since_start=True)


class VM:
    """A migemu (or QEMU) process with a QMP monitor on a unix socket.

    ``memory`` is the guest RAM, backed by a file (``ram_path``) so a test can read it;
    ``image`` fills it with a deterministic realistic image first (that seed), ``ram`` uses an
    existing file instead. ``guest`` is a migemu workload spec (``"dirty,rate=20000"``,
    ``"sweep"``, ``"idle"``), ``faults`` are ``-migemu-fault`` specs, ``args`` extra argv.
    ``incoming="defer"`` makes a destination. Files go to ``workdir`` (default: a private
    temporary directory, removed by ``close()``).
    """

    def __init__(
        self,
        name: str = "vm",
        *,
        profile: str = "7.2",
        memory: str | int = "128M",
        guest: str | None = None,
        faults: Iterable[str] = (),
        args: Sequence[str] = (),
        incoming: str | None = None,
        image: int | None = None,
        ram: Path | str | None = None,
        share: bool = True,
        backend: str = "migemu",
        binary: Sequence[str] | None = None,
        workdir: Path | str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        workload: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if workload is not None:  # the same option under the name the issue uses
            if guest is not None:
                raise ValueError("give guest= or workload=, not both")
            guest = workload
        args = [*args, *extra_args]
        self.name = name
        self.profile = check_profile(profile)
        self.backend = check_backend(backend)
        self.mib = memory_mib(memory)
        _check_guest(guest, self.backend)
        self.faults = [check_fault(f) for f in faults]
        if self.faults and self.backend == "qemu":
            raise UnsupportedByQEMU("fault injection (-migemu-fault) is migemu-only")
        self.guest = guest
        self.args = list(args)
        self.incoming = incoming
        self.image = image
        self.share = share
        self.binary = list(binary) if binary is not None else None
        self.timeout = timeout
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self._ram_given = Path(ram) if ram is not None else None
        self._sock_given: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMP = QMP(name, self.backend)
        self.events = EventLog(self)
        self._new_event = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._started = False

    # -- paths ---------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise VMStateError(f"{self.name}: not started")
        return self._workdir

    @property
    def sock(self) -> Path:
        return self._sock_given or self.workdir / f"{self.name}.sock"

    @property
    def ram(self) -> Path:
        """The file that backs guest RAM (readable while the VM runs)."""
        return self._ram_given if self._ram_given is not None else self.workdir / f"{self.name}.ram"

    ram_path = ram

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        return self._process().pid

    def log(self) -> str:
        """What the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, VMStateError):
            return ""

    def argv(self) -> list[str]:
        mib = self.mib
        base = self.binary or (qemu_command() if self.backend == "qemu" else migemu_command())
        share = "on" if self.share else "off"
        return [
            *base,
            "-machine", "none", "-m", f"{mib}M",
            "-object", f"memory-backend-file,id=mem0,size={mib}M,mem-path={self.ram},share={share}",
            "-machine", "memory-backend=mem0",
            "-qmp", f"unix:{self.sock},server=on,wait=off",
            *(["-incoming", self.incoming] if self.incoming else []),
            *(["-migemu-guest", self.guest] if self.guest else []),
            *[a for f in self.faults for a in ("-migemu-fault", f)],
            *self.args,
        ]  # fmt: skip

    # -- life cycle ----------------------------------------------------------------------

    def use_workdir(self, path: Path) -> None:
        """Put this VM's files in ``path`` (owned by the caller: ``close()`` removes only
        what the VM made in it). Before ``start()`` only."""
        if self.proc is not None:
            raise VMStateError(f"{self.name}: already started")
        self._workdir = Path(path)
        self._own_workdir = False

    async def start(self) -> VM:
        """Start the process and connect ``qmp`` (negotiated). Once only; on failure every
        file made so far is removed and the process (if any) ended."""
        if self._closed:
            raise VMStateError(f"{self.name}: closed; a VM cannot be started again")
        if self._started:
            pid = f" (pid {self.proc.pid})" if self.proc is not None else ""
            raise VMStateError(f"{self.name}: already started{pid}")
        self._started = True
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"migemu-{self.name}-"))
        else:
            self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self._launch()
        except BaseException:
            await self.close()
            raise
        return self

    async def _launch(self) -> None:
        if len(os.fsencode(self.sock)) > UNIX_PATH_MAX:
            raise VMStartError(
                f"{self.name}: socket path {self.sock} is longer than a unix socket allows"
                f" ({UNIX_PATH_MAX} bytes): give a shorter workdir or TMPDIR"
            )
        if self.image is not None and self._ram_given is None:
            from migemu.emulator.guest.image import write_image

            await asyncio.to_thread(write_image, str(self.ram), self.mib << 20, self.image)
        argv = self.argv()
        with open(self.log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            except OSError as err:
                raise VMStartError(f"{self.name}: cannot run {argv[0]}: {err}") from err
        try:
            await connect_when_ready(self.qmp, self.sock, self.proc, self.log, self.timeout)
        except VMStartError as err:
            raise VMStartError(f"{self.name}: {err}") from err
        self._listener = asyncio.create_task(self._listen(), name=f"{self.name}-events")

    @classmethod
    def adopt(
        cls,
        name: str,
        proc: subprocess.Popen[bytes],
        qmp: QMPClient,
        sock: Path,
        ram: Path | None,
        *,
        workdir: Path | None = None,
        backend: str = "migemu",
    ) -> VM:
        """A ``VM`` for a process started (and a ``qmp`` connected) by other code, e.g. a
        libqtest-style harness; ``close()`` ends it like any other."""
        vm = cls(name, backend=backend, workdir=workdir or sock.parent)
        vm.proc = proc
        vm._started = True
        vm.qmp = qmp  # type: ignore[assignment]
        vm._ram_given = ram
        vm._sock_given = sock
        vm._listener = asyncio.create_task(vm._listen(), name=f"{name}-events")
        return vm

    async def _listen(self) -> None:
        # A listener of our own: ``qmp.events`` stays the user's, as in plain qemu.qmp.
        listener = EventListener()
        self.qmp.register_listener(listener)
        try:
            async for event in listener:
                self.events.append(dict(event))
                self._new_event.set()
        finally:
            self.qmp.remove_listener(listener)

    def _process(self) -> subprocess.Popen[bytes]:
        if self._closed:
            raise VMStateError(f"{self.name}: closed")
        if self.proc is None:
            raise VMStateError(f"{self.name}: not started (call start() first)")
        return self.proc

    def _check_alive(self, doing: str) -> None:
        proc = self._process()
        if proc.poll() is not None:
            raise VMExitedError(
                f"{self.name} (pid {proc.pid}) exited with status {proc.returncode} {doing};"
                f" its output: {self.log().strip()[-2000:]!r}",
                proc.returncode,
            )

    @property
    def running(self) -> bool:
        """The process is alive (not the guest's run state: ask ``query-status`` for that)."""
        return self.proc is not None and not self._closed and self.proc.poll() is None

    async def close(self) -> None:
        """End the process (SIGTERM, then SIGKILL) by PID; remove its socket and files.
        Safe to call more than once, and on a VM that never started."""
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except BaseException:
                pass
        try:
            await asyncio.wait_for(self.qmp.disconnect(), 5)
        except BaseException:
            pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        if self._workdir is not None:
            if self._own_workdir:
                shutil.rmtree(self._workdir, ignore_errors=True)
            else:
                if self.sock.exists():
                    os.unlink(self.sock)

    async def __aenter__(self) -> VM:
        if self.proc is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- QMP -----------------------------------------------------------------------------

    async def cmd(
        self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """``qmp.execute`` with a deadline (the VM's ``timeout``) and a clear error when the
        process has gone (``VMExitedError``, with its exit status and output). An error reply
        is ``qemu.qmp.ExecuteError``, as from ``qmp.execute``."""
        self._process()
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self.qmp.execute(name, args), limit)
        except (ExecuteError, UnsupportedByQEMU):
            raise
        except TimeoutError:
            self._check_alive(f"during {name}")
            raise MigrationTimeoutError(
                f"{self.name}: no reply to {name} after {limit:g} s"
            ) from None
        except Exception as err:
            # the connection went away: say so with the exit status once the process is gone
            end = time.monotonic() + 2.0
            while self.proc is not None and self.proc.poll() is None and time.monotonic() < end:
                await asyncio.sleep(POLL_S)
            self._check_alive(f"during {name}")
            raise VMExitedError(
                f"{self.name}: QMP connection lost during {name}: {err}", None
            ) from err

    async def query_migrate(self) -> dict[str, Any]:
        info = await self.cmd("query-migrate")
        assert isinstance(info, dict)
        return info

    async def wait_status(
        self,
        statuses: str | Sequence[str],
        deadline_s: float | None = None,
        *,
        fail_on: Iterable[str] = (),
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll ``query-migrate`` until its status is one of ``statuses``; the answer.

        Raises ``MigrationFailedError`` / ``MigrationStatusError`` if a status in ``fail_on``
        is reached, ``VMExitedError`` if the process exits, ``MigrationTimeoutError`` (with
        the last status and RAM progress) after ``deadline_s``.
        """
        wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        stop = frozenset(fail_on) - set(wanted)
        timeout = self.timeout if deadline_s is None else deadline_s
        end = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while True:
            self._check_alive(f"while waiting for migration status {'|'.join(wanted)}")
            try:
                info = await self.query_migrate()
            except VMExitedError:
                raise
            status = info.get("status")
            if on_poll is not None:
                on_poll(info)
            if status in wanted:
                return info
            if status in stop:
                what = f"{self.name}: migration {status} while waiting for {'|'.join(wanted)}"
                if status == "failed":
                    raise MigrationFailedError(
                        f"{what}: {info.get('error-desc', '(no error-desc)')}", info
                    )
                raise MigrationStatusError(f"{what} ({describe(info)})", info)
            if time.monotonic() > end:
                raise MigrationTimeoutError(
                    f"{self.name}: migration status not {'|'.join(wanted)} after {timeout:g} s"
                    f" ({describe(info)})",
                    info,
                )
            await asyncio.sleep(POLL_S)

    async def wait_exit(self, deadline_s: float | None = None) -> int:
        """Wait for the process to exit; its exit status."""
        proc = self._process()
        timeout = self.timeout if deadline_s is None else deadline_s
        end = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > end:
                raise MigrationTimeoutError(f"{self.name} (pid {proc.pid}) still running after"
                                            f" {timeout:g} s")  # fmt: skip
            await asyncio.sleep(POLL_S * 2)
        return proc.returncode

    # -- events --------------------------------------------------------------------------

    def event_names(self, with_status: bool = True) -> list[str]:
        """``MIGRATION:setup``, ``MIGRATION_PASS:1``, ``STOP``... for the events so far."""
        out = []
        for ev in self.events:
            data = ev.get("data") or {}
            if with_status and "status" in data:
                out.append(f"{ev['event']}:{data['status']}")
            elif "pass" in data:
                out.append(f"{ev['event']}:{data['pass']}")
            else:
                out.append(ev["event"])
        return out

    def iter_events(
        self,
        names: str | Iterable[str] | None = None,
        *,
        timeout: float | None = None,
        since_start: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Events as they arrive, from this call on (``since_start``: from the first one),
        optionally only those named. Raises ``MigrationTimeoutError`` if none comes for
        ``timeout`` seconds and ``VMExitedError`` once the process exited and none is left."""
        wanted = {names} if isinstance(names, str) else set(names) if names else None
        index = 0 if since_start else len(self.events)
        return self._events_from(index, wanted, self.timeout if timeout is None else timeout)

    async def _events_from(
        self, index: int, wanted: set[str] | None, limit: float
    ) -> AsyncIterator[dict[str, Any]]:
        end = time.monotonic() + limit
        while True:
            while index < len(self.events):
                ev = self.events[index]
                index += 1
                if wanted is None or ev["event"] in wanted:
                    yield ev
                    end = time.monotonic() + limit
            while index >= len(self.events):
                self._new_event.clear()
                if index < len(self.events):
                    break
                self._check_alive("while waiting for an event")
                left = end - time.monotonic()
                if left <= 0:
                    what = ", ".join(sorted(wanted)) if wanted else "any event"
                    raise MigrationTimeoutError(f"{self.name}: no {what} for {limit:g} s")
                try:
                    await asyncio.wait_for(self._new_event.wait(), min(left, 0.1))
                except TimeoutError:
                    pass

    async def wait_event(
        self, name: str, timeout: float | None = None, *, since_start: bool = True
    ) -> dict[str, Any]:
        """The first event called ``name`` (by default also one already received)."""
        async for ev in self.iter_events(name, timeout=timeout, since_start=since_start):
            return ev
        raise AssertionError("unreachable")  # pragma: no cover


async def start_vm(name: str = "vm", **options: Any) -> VM:
    """``VM(name, **options)`` started: ``vm = await start_vm(memory="256M")``."""
    vm = VM(name, **options)
    try:
        await vm.start()
    except BaseException:
        await vm.close()
        raise
    return vm
