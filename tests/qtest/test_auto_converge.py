"""auto-converge end to end, migemu and QEMU 7.2 side by side.

Both run migration-test's guest (the boot sector that sweeps 1..100 MiB, one byte per page;
QEMU under TCG) as a source that cannot converge (30 MB/s, 1 ms downtime), with
``cpu-throttle-initial`` 5 and ``cpu-throttle-increment`` 50. What a client sees must be the
same: no ``cpu-throttle-percentage`` before the throttle starts, then exactly 5, then 55, and
none once the migration (let to converge) has completed. Each source migrates to a
destination of its own kind.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Sequence

import pytest
from bootsect import sweep_boot_sector
from harness import QEMU, VM, Cluster, connect_when_ready, migemu_cmd
from qemu.qmp import QMPClient

pytestmark = pytest.mark.asyncio
DEADLINE_S = 90.0


def argv0(name: str) -> list[str]:
    if name == "qemu":
        assert QEMU is not None
        return [QEMU, "-nodefaults", "-display", "none", "-accel", "tcg"]
    return migemu_cmd()


async def start_guest(cluster: Cluster, name: str, binary: str, extra: Sequence[str] = ()) -> VM:
    disk = cluster.tmp / "bootsect"
    if not disk.exists():
        disk.write_bytes(sweep_boot_sector())
    sock = cluster.tmp / f"{name}.sock"
    argv = [
        *argv0(binary), "-m", "150M", "-serial", f"file:{cluster.tmp / name}.serial",
        "-drive", f"file={disk},format=raw", "-qmp", f"unix:{sock},server=on,wait=off", *extra,
    ]  # fmt: skip
    log = open(cluster.tmp / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    qmp = QMPClient(name)
    try:
        await connect_when_ready(qmp, sock, proc, lambda: cluster.log(name))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    vm = VM.adopt(name, proc, qmp, sock, None, workdir=cluster.tmp)
    cluster.vms.append(vm)
    return vm


async def throttle_steps(cluster: Cluster, binary: str) -> tuple[list[int | None], dict]:
    src = await start_guest(cluster, f"{binary}-src", binary)
    dst = await start_guest(cluster, f"{binary}-dst", binary, ["-incoming", "defer"])
    sock = cluster.tmp / f"{binary}-mig.sock"
    await dst.cmd("migrate-incoming", {"uri": f"unix:{sock}"})
    caps = [{"capability": "auto-converge", "state": True}]
    await src.cmd("migrate-set-capabilities", {"capabilities": caps})
    await src.cmd(
        "migrate-set-parameters",
        {
            "cpu-throttle-initial": 5,
            "cpu-throttle-increment": 50,
            "max-cpu-throttle": 95,
            "max-bandwidth": 30 * 1000 * 1000,
            "downtime-limit": 1,
        },
    )
    # As migration-test's wait_for_serial: one whole sweep first ("B"), so every page of the
    # range is non-zero and dirtied again; a guest slowed by a loaded host has not started
    # yet otherwise, and the still-zero RAM migrates at once without any throttling.
    serial = cluster.tmp / f"{binary}-src.serial"
    end = time.monotonic() + DEADLINE_S
    while b"B" not in (serial.read_bytes() if serial.exists() else b""):
        assert time.monotonic() < end, f"{binary}: the guest never completed a sweep"
        await asyncio.sleep(0.05)
    await src.cmd("migrate", {"uri": f"unix:{sock}"})
    steps: list[int | None] = []
    end = time.monotonic() + DEADLINE_S
    while len(steps) < 3:
        info = await src.cmd("query-migrate")
        assert info["status"] in ("setup", "active"), info
        pct = info.get("cpu-throttle-percentage") if info["status"] == "active" else "setup"
        if pct != "setup" and (not steps or steps[-1] != pct):
            steps.append(pct)
        assert time.monotonic() < end, f"{binary}: throttle steps so far {steps}"
        await asyncio.sleep(0.05)
    await src.cmd(
        "migrate-set-parameters",
        {"max-bandwidth": 1000 * 1000 * 1000, "downtime-limit": 30 * 1000},
    )
    end = time.monotonic() + DEADLINE_S
    while (info := await src.cmd("query-migrate"))["status"] not in ("completed", "failed"):
        assert time.monotonic() < end, f"{binary}: did not converge"
        await asyncio.sleep(0.05)
    return steps, info


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
async def test_throttle_steps_match_qemu(cluster):
    ours, our_end = await throttle_steps(cluster, "migemu")
    qemus, qemu_end = await throttle_steps(cluster, "qemu")
    assert qemus == [None, 5, 55]
    assert ours == qemus
    for end in (our_end, qemu_end):
        assert end["status"] == "completed" and "cpu-throttle-percentage" not in end
