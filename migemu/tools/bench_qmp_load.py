"""QMP load benchmark: 50 clients poll query-migrate as fast as they can during a migration.

Tools layer. A source ``migemu`` gets one control monitor plus 50 more (QEMU serves one client
per monitor socket); runs alternate without and with the 50 pollers, each migrating the same
RAM image to a fresh destination over a unix socket. Every reply is checked (a known status,
counters that never go backwards per client). The result is the ratio of median throughputs
(ram transferred / total-time), loaded over unloaded, measured side by side in one run, with
the pollers' reply rate; written as JSON (and a one-line summary) under ``bench-results/``.
Usage: ``python -m migemu.tools.bench_qmp_load [--mib 256] [--runs 3] [--clients 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from migemu.emulator.guest.image import write_image

STATUSES = {"setup", "active", "completed", "failed", "cancelled", "cancelling", "device"}
DEADLINE_S = 120.0


class Monitor:
    """A minimal QMP client over a unix socket (one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path) -> Monitor:
        end = time.monotonic() + DEADLINE_S
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.01)
        mon = cls(reader, writer)
        await mon.reply()  # greeting
        await mon.cmd("qmp_capabilities")
        return mon

    async def reply(self) -> dict[str, Any]:
        while True:
            msg = json.loads(await self.reader.readline())
            if "event" not in msg:
                return msg

    async def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self.writer.write(json.dumps(req).encode() + b"\r\n")
        msg = await self.reply()
        if "error" in msg:
            raise RuntimeError(f"{name}: {msg['error']['desc']}")
        return msg["return"]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)


def migemu_argv(mib: int, ram: Path, socks: list[Path], incoming: bool) -> list[str]:
    argv = [sys.executable, "-m", "migemu", "-machine", "none", "-m", f"{mib}M",
            "-object", f"memory-backend-file,id=mem0,size={mib}M,mem-path={ram},share=on",
            "-machine", "memory-backend=mem0"]  # fmt: skip
    for sock in socks:
        argv += ["-qmp", f"unix:{sock},server=on,wait=off"]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def poller(path: Path, done: asyncio.Event, stats: dict[str, int]) -> None:
    mon = await Monitor.connect(path)
    last = -1
    previous = None
    try:
        while not done.is_set():
            info = await mon.cmd("query-migrate")
            stats["replies"] += 1
            status = info.get("status")
            if status is not None and status not in STATUSES:
                stats["bad"] += 1
            if previous in ("completed", "failed", "cancelled") and status != previous:
                last = -1  # the previous run's final counters, then the new migration's
            previous = status
            transferred = info.get("ram", {}).get("transferred", last)
            if transferred < last:
                stats["bad"] += 1
            last = max(last, transferred)
    finally:
        await mon.close()


async def one_run(
    tmp: Path, k: int, mib: int, control: Monitor, pollers: list[Path], method: str
) -> dict[str, Any]:
    dst_ram = tmp / "dst.ram"
    dst_sock = tmp / f"dst{k}.qmp"
    dst = spawn(migemu_argv(mib, dst_ram, [dst_sock], True), tmp / f"dst{k}.log")
    try:
        dmon = await Monitor.connect(dst_sock)
        for mon in (control, dmon):
            await mon.cmd("migrate-set-capabilities", {"capabilities": [
                {"capability": "multifd", "state": True}]})  # fmt: skip
            await mon.cmd(
                "migrate-set-parameters",
                {"multifd-channels": 2, "multifd-compression": method},
            )
        uri = f"unix:{tmp / f'mig{k}.sock'}"
        await dmon.cmd("migrate-incoming", {"uri": uri})
        done = asyncio.Event()
        stats = {"replies": 0, "bad": 0}
        tasks = [asyncio.create_task(poller(p, done, stats)) for p in pollers]
        if tasks:
            end = time.monotonic() + DEADLINE_S  # every poller connected and polling
            while stats["replies"] < len(tasks) and time.monotonic() < end:
                await asyncio.sleep(0.01)
        started = time.monotonic()
        await control.cmd("migrate", {"uri": uri})
        while True:
            info = await control.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - started > DEADLINE_S:
                raise TimeoutError("migration did not finish")
            await asyncio.sleep(0.02)
        wall = time.monotonic() - started
        replies_during = stats["replies"]
        done.set()
        await asyncio.gather(*tasks)
        await dmon.close()
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: {info.get('error-desc')}")
        ram = info["ram"]
        await control.cmd("cont")
        return {
            "clients": len(pollers),
            "throughput-mbps": ram["transferred"] * 8 / (info["total-time"] / 1000) / 1e6,
            "total-time-ms": info["total-time"],
            "wall-s": round(wall, 3),
            "replies": replies_during,
            "replies-per-s": round(replies_during / wall, 1) if pollers else 0,
            "bad-replies": stats["bad"],
        }
    finally:
        stop(dst)


async def bench(mib: int, runs: int, clients: int, method: str, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="migemu-qmpload-") as tmpdir:
        tmp = Path(tmpdir)
        src_ram = tmp / "src.ram"
        write_image(str(src_ram), mib << 20, seed=4)
        control_sock = tmp / "control.qmp"
        pollers = [tmp / f"poll{i}.qmp" for i in range(clients)]
        src = spawn(migemu_argv(mib, src_ram, [control_sock, *pollers], False), tmp / "src.log")
        try:
            control = await Monitor.connect(control_sock)
            results: dict[str, list[dict[str, Any]]] = {"idle": [], "loaded": []}
            for k in range(runs):  # side by side: alternate, so drift hits both alike
                results["idle"].append(await one_run(tmp, 2 * k, mib, control, [], method))
                results["loaded"].append(
                    await one_run(tmp, 2 * k + 1, mib, control, pollers, method)
                )
            await control.close()
        finally:
            stop(src)
    idle = statistics.median(r["throughput-mbps"] for r in results["idle"])
    loaded = statistics.median(r["throughput-mbps"] for r in results["loaded"])
    summary = {
        "mib": mib,
        "method": method,
        "runs": runs,
        "clients": clients,
        "cpus": os.cpu_count(),
        "median-mbps-idle": round(idle, 1),
        "median-mbps-loaded": round(loaded, 1),
        "ratio-loaded-over-idle": round(loaded / idle, 3),
        "throughput-drop-percent": round(100 * (1 - loaded / idle), 1),
        "bad-replies": sum(r["bad-replies"] for r in results["loaded"]),
        "median-replies-per-s": statistics.median(r["replies-per-s"] for r in results["loaded"]),
        "runs-detail": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_qmp_load", description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--method", default="none", choices=["none", "zlib", "zstd"])
    parser.add_argument("--out", default="bench-results/qmp-load.json")
    args = parser.parse_args(argv)
    summary = asyncio.run(bench(args.mib, args.runs, args.clients, args.method, Path(args.out)))
    brief = {k: v for k, v in summary.items() if k != "runs-detail"}
    print(json.dumps(brief, indent=2))
    return 1 if summary["bad-replies"] else 0


if __name__ == "__main__":
    sys.exit(main())
