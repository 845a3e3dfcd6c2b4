"""Fault matrix: every injected fault x none/zlib/zstd x setup/iterate/switchover, end to end.

For each case a long-lived source (RAM: a memory-backend-file, share=on, copy of an image)
migrates to a fresh destination over a unix socket with one fault injected. Expected: the
source ends ``failed`` (``cancelled`` for a stall we cancel) with a clear error-desc, keeps
running with its RAM file equal to the image, issued no IO after the first error on any link
(``x-migemu-query-links``), and is back to its baseline of threads and fds; the destination
exits 1 with the receiver's message; a new migration then completes with identical RAM.
CI runs a subset covering every fault and moment; ``MIGEMU_FAULT_MATRIX=full`` runs all.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from harness import Cluster, make_image, sha256

from migemu.emulator.cmdline import CmdlineError, parse_command_line
from migemu.emulator.migration.faults import FaultSpecError, parse_spec

pytestmark = pytest.mark.asyncio

MIB = 16
FULL = os.environ.get("MIGEMU_FAULT_MATRIX") == "full"
METHODS = ("none", "zlib", "zstd")
MOMENTS = ("setup", "iterate", "switchover")
# Source parameters that make each moment exist and leave plenty to send after it: the
# switchover pass only carries much when downtime-limit lets the loop stop early.
MOMENT_PARAMS = {
    "setup": {"max-bandwidth": 64 << 20},
    "iterate": {"max-bandwidth": 64 << 20, "downtime-limit": 1},
    "switchover": {"max-bandwidth": 32 << 20, "downtime-limit": 2000},
}
SRC_WRITE_ERROR = "Unable to write to socket: "
CORRUPT_MESSAGES = {
    "magic": "multifd: received packet magic deadbeef and expected magic 11223344",
    "version": "multifd: received packet version 2 and expected version 1",
    "flags": "flags received",
    "pages-used": "pages and expected maximum pages are 128",
    "offset": "multifd: offset too long",
    "ramblock": "multifd: unknown ram block x-migemu-no-such-block",
    # the destination may see the main channel close first (the source failed at once)
    "truncate": ("Unexpected end-of-file before all data were read", "load of migration failed"),
    "payload": {"zlib": "inflate returned", "zstd": "decompressStream returned"},
}
FAULTS = ("drop-channel", "close-main", "stall", "dst-exit") + tuple(
    f"corrupt-{w}" for w in CORRUPT_MESSAGES
)


def all_cases() -> list[tuple[str, str, str]]:
    return [
        (fault, method, moment)
        for fault in FAULTS
        for method in METHODS
        for moment in MOMENTS
        if not (fault == "corrupt-payload" and method == "none")  # nothing to decompress
    ]


def ci_cases(method: str) -> list[tuple[str, str, str]]:
    """Every fault once over the three methods, moments rotating."""
    out = []
    for i, fault in enumerate(FAULTS):
        m = METHODS[i % 3] if fault != "corrupt-payload" else ("zlib", "zstd")[i % 2]
        if m == method:
            out.append((fault, method, MOMENTS[(i + i // 3) % 3]))
    return out


def proc_counts(pid: int) -> tuple[int, int]:
    """(threads, open fds) of a process."""
    threads = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Threads:")
    )
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


async def wait_counts(pid: int, baseline: tuple[int, int], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while (now := proc_counts(pid)) != baseline:
        if time.monotonic() > end:
            fds = sorted(
                os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
            )
            raise AssertionError(f"threads/fds {now} != baseline {baseline}: {fds}")
        await asyncio.sleep(0.02)


async def configure(vm, method: str, params: dict[str, int] | None = None) -> None:
    caps = [{"capability": "events", "state": True}, {"capability": "multifd", "state": True}]
    await vm.cmd("migrate-set-capabilities", {"capabilities": caps})
    await vm.cmd(
        "migrate-set-parameters",
        {"multifd-channels": 2, "multifd-compression": method, **(params or {})},
    )


async def wait_fired(vm, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not any(f["state"] == "fired" for f in await vm.cmd("x-migemu-query-faults")):
        if time.monotonic() > end:
            raise TimeoutError("the fault never fired")
        await asyncio.sleep(0.01)


class Bench:
    """One source process and the cases run against it."""

    def __init__(self, cluster: Cluster, tmp: Path, image: Path, method: str) -> None:
        self.cluster = cluster
        self.tmp = tmp
        self.image = image
        self.method = method
        self.n = 0

    async def start(self) -> None:
        live = self.tmp / "src-live.ram"
        shutil.copy(self.image, live)
        self.live = live
        self.src = await self.cluster.start("src", mem_mib=MIB, image=live, share=True)
        await configure(self.src, self.method)
        self.pid = self.src.proc.pid
        # One clean migration first: modules migemu imports on first use (numpy starts its
        # BLAS thread) belong to the baseline, not to a case.
        self.baseline: tuple[int, int] | None = None
        await self.recover("warm-up")
        self.baseline = proc_counts(self.pid)

    async def destination(self, extra: tuple[str, ...] = ()) -> tuple[object, str]:
        self.n += 1
        name = f"dst{self.n}"
        dst = await self.cluster.start(name, mem_mib=MIB, incoming="defer", extra=extra)
        await configure(dst, self.method)
        uri = f"unix:{self.tmp / f'mig{self.n}.sock'}"
        await dst.cmd("migrate-incoming", {"uri": uri})
        return dst, uri

    async def run_case(self, fault: str, moment: str) -> None:
        src, method = self.src, self.method
        label = f"{fault}/{method}/{moment}"
        what = fault.removeprefix("corrupt-")
        extra: tuple[str, ...] = ()
        if fault == "dst-exit" and moment == "setup":
            extra = ("-migemu-fault", "dst-exit,after=0")  # the command-line route
        dst, uri = await self.destination(extra)
        params = dict(MOMENT_PARAMS[moment])
        params.setdefault("downtime-limit", 300)
        await src.cmd("migrate-set-parameters", params)
        pause = fault == "dst-exit" and moment == "switchover"
        caps = [{"capability": "pause-before-switchover", "state": pause}]
        await src.cmd("migrate-set-capabilities", {"capabilities": caps})
        spec = {
            "drop-channel": f"drop-channel,channel=1,at={moment}",
            "close-main": f"close-main,at={moment}",
            "stall": f"stall,channel=0,at={moment},seconds=60",
        }.get(fault, f"corrupt,what={what},at={moment}")
        if fault == "dst-exit":
            if moment == "iterate":
                await dst.cmd("x-migemu-inject-fault", {"spec": "dst-exit,after=4"})
        else:
            await src.cmd("x-migemu-inject-fault", {"spec": spec})
        await src.cmd("migrate", {"uri": uri})
        if pause:
            await src.wait_status(["pre-switchover"])
            await dst.cmd("x-migemu-inject-fault", {"spec": "dst-exit,after=0"})
            await src.cmd("migrate-continue", {"state": "pre-switchover"})
        if fault == "stall":
            await wait_fired(src)
            await src.cmd("migrate_cancel")
            info = await src.wait_status(["cancelled", "failed", "completed"])
            assert info == {"status": "cancelled"}, (label, info)
        else:
            info = await src.wait_status(["failed", "completed", "cancelled"])
            assert info["status"] == "failed", (label, info)
            desc = info["error-desc"]
            assert desc.startswith(SRC_WRITE_ERROR), (label, desc)
        assert await dst.wait_exit() == 1, label
        log = self.cluster.log(dst.name)
        expected = CORRUPT_MESSAGES.get(what) if fault.startswith("corrupt-") else None
        if isinstance(expected, dict):
            expected = expected[method]
        if isinstance(expected, str):
            expected = (expected,)
        if expected is not None:
            assert any(e in log for e in expected), (label, log)
        if fault == "dst-exit":
            assert "destination exits with status 1" in log, (label, log)
        else:  # a destination that fails (rather than dies) removes its socket
            assert not (self.tmp / f"mig{self.n}.sock").exists(), label
        await self.check_source(label)
        await self.recover(label)

    async def check_source(self, label: str) -> None:
        src = self.src
        assert (await src.cmd("query-status"))["status"] == "running", label
        links = await src.cmd("x-migemu-query-links")
        last = max(link["migration"] for link in links)
        mine = [link for link in links if link["migration"] == last]
        assert len(mine) == 3, (label, mine)  # main + 2 channels
        for link in mine:
            assert link["io-after-error"] == 0 and link["bytes-after-error"] == 0, (label, link)
            assert "error" in link, (label, link)
        assert sha256(self.live) == sha256(self.image), f"{label}: source RAM changed"
        assert self.baseline is not None
        await wait_counts(self.pid, self.baseline)
        await src.cmd("x-migemu-clear-faults")

    async def recover(self, label: str) -> None:
        """A new migration, no fault: completes, RAM identical; then the source runs again."""
        src = self.src
        await src.cmd("migrate-set-capabilities", {"capabilities": [
            {"capability": "pause-before-switchover", "state": False}]})  # fmt: skip
        await src.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40, "downtime-limit": 300})
        dst, uri = await self.destination()
        await src.cmd("migrate", {"uri": uri})
        info = await src.wait_status(["completed", "failed", "cancelled"])
        assert info["status"] == "completed", (label, info)
        await dst.wait_status(["completed"])
        assert sha256(dst.ram) == sha256(self.image), f"{label}: RAM differs after recovery"
        await dst.close()
        await src.cmd("cont")
        if self.baseline is not None:
            await wait_counts(self.pid, self.baseline)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "image.ram"
    make_image(path, MIB, seed=11)
    return path


@pytest.mark.parametrize("method", METHODS)
async def test_fault_matrix(cluster, tmp_path, image, method):
    bench = Bench(cluster, tmp_path, image, method)
    await bench.start()
    cases = [c for c in all_cases() if c[1] == method] if FULL else ci_cases(method)
    started = time.monotonic()
    for fault, _, moment in cases:
        await bench.run_case(fault, moment)
    # After all those failures the source still shuts down cleanly (guest RAM unmaps).
    await bench.src.qmp.disconnect()
    bench.src.proc.send_signal(signal.SIGTERM)
    assert await bench.src.wait_exit() == 0, cluster.log("src")[-2000:]
    report = os.environ.get("MIGEMU_FAULT_REPORT")
    if report:
        seconds = round(time.monotonic() - started, 1)
        with open(report, "a") as f:
            f.write(json.dumps({"method": method, "cases": len(cases), "seconds": seconds}) + "\n")


async def test_event_after_reply(cluster, tmp_path, image):
    """``event`` fault: MIGRATION events come after the reply to migrate (QEMU sends the
    setup event first) and 0.2 s later; their order among themselves is kept."""
    raw_path = tmp_path / "raw.sock"
    src = await cluster.start(
        "src", mem_mib=MIB, image=image, share=False,
        extra=["-qmp", f"unix:{raw_path},server=on,wait=off"],
    )  # fmt: skip
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    for vm in (src, dst):
        await configure(vm, "none")
    await dst.cmd("migrate-incoming", {"uri": f"unix:{tmp_path / 'mig.sock'}"})
    reader, writer = await asyncio.open_unix_connection(str(raw_path))
    await reader.readline()
    writer.write(b'{"execute": "qmp_capabilities"}\r\n')
    assert json.loads(await reader.readline()) == {"return": {}}

    async def migrate_lines() -> list[dict]:
        writer.write(json.dumps({"execute": "migrate", "arguments": {
            "uri": f"unix:{tmp_path / 'mig.sock'}"}}).encode() + b"\r\n")  # fmt: skip
        out = []
        while not any(m.get("data", {}).get("status") == "completed" for m in out):
            out.append(json.loads(await asyncio.wait_for(reader.readline(), 30)))
        return out

    await src.cmd("x-migemu-inject-fault", {"spec": "event,name=MIGRATION,delay=0.2,count=0"})
    lines = await migrate_lines()
    kinds = [m.get("event", "return" if "return" in m else "?") for m in lines]
    assert kinds[0] == "return", kinds
    statuses = [m["data"]["status"] for m in lines if m.get("event") == "MIGRATION"]
    assert statuses == ["setup", "active", "completed"], statuses
    writer.close()
    await writer.wait_closed()


async def test_bad_fault_specs(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    from qemu.qmp import ExecuteError

    for spec, message in [
        ("explode", "unknown fault 'explode'"),
        ("stall,seconds=x", "'seconds' expects a number"),
        ("corrupt,what=nothing", "'what' is one of"),
        ("drop-channel,at=later", "'at' is one of setup, iterate, switchover"),
        ("close-main,channel=1", "unknown parameter 'channel=1'"),
    ]:
        with pytest.raises(ExecuteError) as err:
            await src.cmd("x-migemu-inject-fault", {"spec": spec})
        assert message in str(err.value), (spec, str(err.value))
    assert await src.cmd("x-migemu-query-faults") == []
    with pytest.raises(CmdlineError) as cerr:
        parse_command_line(["migemu", "-migemu-fault", "corrupt,what=nothing"])
    assert "-migemu-fault corrupt,what=nothing: fault 'corrupt'" in cerr.value.message
    with pytest.raises(FaultSpecError):
        parse_spec("stall,seconds=-1")


async def test_faults_off_by_default(cluster, image):
    """No fault unless one is injected: a plain migration's links show no error."""
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    assert await src.cmd("x-migemu-query-faults") == []
    assert await src.cmd("x-migemu-query-links") == []
