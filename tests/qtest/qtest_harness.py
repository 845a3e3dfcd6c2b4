"""libqtest in Python: launch migemu (or QEMU) the way QEMU's qtests do and drive it.

The test is the server on two unix sockets: the process connects to the qtest socket
(``-qtest unix:PATH``) and then to its QMP monitor (``-chardev socket,path=...``), exactly
the command line libqtest builds. ``QtestMachine`` speaks the qtest text protocol (with
pipelining for bulk reads) and QMP through ``qemu.qmp``. Every process is ended by PID and
every socket and file lives in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from harness import DEADLINE_S, VM, migemu_cmd
from qemu.qmp import QMPClient

PAGE = 4096
SWEEP_START = 1 << 20
SWEEP_END = 100 << 20


def libqtest_argv(
    binary: Sequence[str],
    tmp: Path,
    name: str,
    *,
    boot: Path | None,
    incoming: str | None = None,
    extra: Sequence[str] = (),
    qtest_log: str = "/dev/null",
) -> list[str]:
    """migration-test's command line (test_migrate_start + qtest_init)."""
    return [
        *binary,
        "-qtest", f"unix:{tmp / f'{name}.qtest'}",
        "-qtest-log", qtest_log,
        "-chardev", f"socket,path={tmp / f'{name}.qmp'},id=char0",
        "-mon", "chardev=char0,mode=control",
        "-display", "none",
        "-accel", "kvm", "-accel", "tcg",
        "-name", f"{name},debug-threads=on",
        "-m", "150M",
        "-serial", f"file:{tmp / f'{name}.serial'}",
        *(["-incoming", incoming] if incoming else []),
        *(["-drive", f"file={boot},format=raw"] if boot else []),
        *extra,
        "-accel", "qtest",
    ]  # fmt: skip


class QtestMachine(VM):
    """A ``VM`` that libqtest-style tests also drive over its qtest socket."""

    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    serial: Path | None = None

    # -- qtest -------------------------------------------------------------------------

    async def qtest(self, line: str) -> str:
        assert self.reader is not None and self.writer is not None
        self.writer.write(line.encode() + b"\n")
        return (await self.reader.readline()).decode().rstrip("\n")

    async def qtest_many(self, lines: Sequence[str]) -> list[str]:
        """Send every command, then read every answer (one answer per command, in order)."""
        assert self.reader is not None and self.writer is not None
        self.writer.write("".join(f"{line}\n" for line in lines).encode())
        return [(await self.reader.readline()).decode().rstrip("\n") for _ in lines]

    async def memread(self, addr: int, size: int) -> bytes:
        answer = await self.qtest(f"read 0x{addr:x} 0x{size:x}")
        assert answer.startswith("OK 0x"), answer
        return bytes.fromhex(answer[5:])

    async def memwrite(self, addr: int, data: bytes) -> None:
        assert await self.qtest(f"write 0x{addr:x} 0x{len(data):x} 0x{data.hex()}") == "OK"

    async def sweep_column(self, start: int = SWEEP_START, end: int = SWEEP_END) -> bytes:
        """Byte 0 of every page, as check_guests_ram reads it (one ``read`` per page)."""
        answers = await self.qtest_many([f"read 0x{a:x} 0x1" for a in range(start, end, PAGE)])
        return bytes(int(a[5:], 16) for a in answers)

    # -- QMP and the process (cmd, wait_status, wait_event, wait_exit: see harness.VM) --

    async def wait_serial(self, char: str, deadline_s: float = DEADLINE_S) -> str:
        end = time.monotonic() + deadline_s
        while True:
            assert self.serial is not None
            text = self.serial.read_text(encoding="latin-1")
            if char in text:
                return text
            if time.monotonic() > end:
                raise TimeoutError(f"{self.name}: no {char!r} on serial (have {text[:40]!r})")
            await asyncio.sleep(0.005)

    async def terminate(self) -> int:
        """SIGTERM as qtest_quit does; the exit status (negative: killed by a signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        await super().close()


class QtestCluster:
    """The processes of one test; ``close()`` ends them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.machines: list[QtestMachine] = []

    async def start(
        self,
        name: str,
        *,
        boot: Path | None,
        incoming: str | None = None,
        extra: Sequence[str] = (),
        binary: Sequence[str] | None = None,
        qtest_log: str = "/dev/null",
    ) -> QtestMachine:
        qtest_path = self.tmp / f"{name}.qtest"
        qmp_path = self.tmp / f"{name}.qmp"
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        connected = asyncio.get_running_loop().create_future()

        def on_qtest(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if not connected.done():
                connected.set_result((r, w))

        server = await asyncio.start_unix_server(on_qtest, qtest_path)
        qmp = QMPClient(name)
        await qmp.start_server(str(qmp_path))
        argv = libqtest_argv(
            binary or migemu_cmd(), self.tmp, name, boot=boot, incoming=incoming,
            extra=extra, qtest_log=qtest_log,
        )  # fmt: skip
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            reader, writer = await asyncio.wait_for(connected, DEADLINE_S)
            await asyncio.wait_for(qmp.accept(), DEADLINE_S)
        except BaseException:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{name} did not connect: {self.log(name)}") from None
        finally:
            server.close()
            await server.wait_closed()
            for p in (qtest_path, qmp_path):
                if p.exists():
                    os.unlink(p)
        vm = QtestMachine.adopt(name, proc, qmp, qmp_path, None)
        vm.reader, vm.writer, vm.serial = reader, writer, self.tmp / f"{name}.serial"
        self.machines.append(vm)
        assert await vm.qtest("endianness") == "OK little"  # libqtest asks first
        return vm

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def close(self) -> None:
        for vm in self.machines:
            await vm.close()
