"""Test harness for end-to-end tests: real migemu (or QEMU) processes driven over QMP.

Like QEMU's own migration qtest, tests start processes with a command line, talk to them
with ``qemu.qmp``'s ``QMPClient``, wait for states with deadlines (never fixed sleeps) and
end every process they start, by PID, removing sockets and files with the tmp_path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient

QEMU = shutil.which("qemu-system-x86_64")
DEADLINE_S = 60.0
SHARED = Path(__file__).parents[2].parent / "shared"
MAKE_IMAGE = SHARED / "reference" / "make_image.py"


async def connect_when_ready(
    qmp: QMPClient,
    sock: Path,
    proc: subprocess.Popen[bytes],
    log: Callable[[], str] = lambda: "",
    deadline_s: float = DEADLINE_S,
) -> None:
    """Connect once the process listens (the socket file exists a moment before listen())."""
    end = time.monotonic() + deadline_s
    while True:
        if sock.exists():
            try:
                await qmp.connect(str(sock))
                return
            except ConnectError:
                pass
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{sock} never became ready: {log()}")
        await asyncio.sleep(0.01)


def migemu_cmd() -> list[str]:
    return [sys.executable, "-m", "migemu"]


def qemu_cmd() -> list[str]:
    assert QEMU is not None
    return [QEMU, "-nodefaults", "-display", "none"]


def make_image(path: Path, mib: int, seed: int = 1) -> None:
    """A realistic RAM image (zero, text, sparse and random pages), deterministic."""
    from migemu.emulator.guest.image import write_image

    write_image(str(path), mib << 20, seed=seed)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class VM:
    """One running process with its QMP client."""

    name: str
    proc: subprocess.Popen[bytes]
    qmp: QMPClient
    sock: Path
    ram: Path | None
    events: list[dict[str, Any]] = field(default_factory=list)
    _listener: asyncio.Task[None] | None = None

    async def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(name, args)

    async def listen(self) -> None:
        async for event in self.qmp.events:
            self.events.append(event)

    def event_names(self, with_status: bool = True) -> list[str]:
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

    async def wait_status(
        self, statuses: Sequence[str], deadline_s: float = DEADLINE_S
    ) -> dict[str, Any]:
        end = time.monotonic() + deadline_s
        while True:
            info = await self.cmd("query-migrate")
            if info.get("status") in statuses:
                return info
            if time.monotonic() > end:
                raise TimeoutError(f"{self.name}: status {info.get('status')} not in {statuses}")
            await asyncio.sleep(0.01)

    async def wait_exit(self, deadline_s: float = DEADLINE_S) -> int:
        end = time.monotonic() + deadline_s
        while self.proc.poll() is None:
            if time.monotonic() > end:
                raise TimeoutError(f"{self.name} did not exit")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        try:
            await self.qmp.disconnect()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    """The processes of one test; ``close()`` ends them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.vms: list[VM] = []

    async def start(
        self,
        name: str,
        *,
        mem_mib: int = 32,
        image: Path | None = None,
        share: bool = True,
        incoming: str | None = None,
        extra: Sequence[str] = (),
        binary: Sequence[str] | None = None,
    ) -> VM:
        sock = self.tmp / f"{name}.sock"
        ram = image if image is not None else self.tmp / f"{name}.ram"
        argv = [
            *(binary or migemu_cmd()),
            "-machine", "none", "-m", f"{mem_mib}M",
            "-object",
            f"memory-backend-file,id=mem0,size={mem_mib}M,mem-path={ram},"
            f"share={'on' if share else 'off'}",
            "-machine", "memory-backend=mem0",
            "-qmp", f"unix:{sock},server=on,wait=off",
            *(["-incoming", incoming] if incoming else []),
            *extra,
        ]  # fmt: skip
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        qmp = QMPClient(name)
        vm = VM(name, proc, qmp, sock, ram)
        self.vms.append(vm)
        await connect_when_ready(qmp, sock, proc, lambda: self.log(name))
        vm._listener = asyncio.create_task(vm.listen())
        return vm

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def close(self) -> None:
        for vm in self.vms:
            await vm.close()


async def setup_pair(
    src: VM,
    dst: VM,
    *,
    multifd: bool,
    method: str = "none",
    channels: int = 2,
    events: bool = True,
    bandwidth: int = 1 << 40,
    extra_caps: Sequence[str] = (),
) -> str:
    """Same capabilities and parameters on both sides; dst listens; returns the URI."""
    caps = [{"capability": "events", "state": events}, {"capability": "multifd", "state": multifd}]
    caps += [{"capability": c, "state": True} for c in extra_caps]
    for vm in (src, dst):
        await vm.cmd("migrate-set-capabilities", {"capabilities": caps})
        await vm.cmd(
            "migrate-set-parameters",
            {
                "multifd-channels": channels,
                "multifd-compression": method,
                "max-bandwidth": bandwidth,
            },
        )
    await dst.cmd("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    info = await dst.cmd("query-migrate")
    return f"tcp:127.0.0.1:{info['socket-address'][0]['port']}"


def page_stats(path: Path) -> tuple[int, int]:
    """(zero pages, non-zero pages) of a RAM file."""
    data = path.read_bytes()
    zero = bytes(4096)
    n = len(data) // 4096
    zeros = sum(1 for i in range(n) if data[i * 4096 : (i + 1) * 4096] == zero)
    return zeros, n - zeros


def file_size(path: Path) -> int:
    return os.stat(path).st_size
