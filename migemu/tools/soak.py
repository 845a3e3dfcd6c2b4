"""``migemu soak``: many randomized migrations, each completed one checked for identical RAM.

Tools layer. One process holds a source ``Machine`` and, per migration, a fresh destination
``Machine``; they talk through the real engine over real unix sockets (QMP commands go through
each machine's dispatcher, so no process start per migration). Every migration draws, from a
seeded RNG: multifd on/off, method, channels, RAM size, guest dirty rate, bandwidth, and
whether to complete, cancel at a random moment or inject a random fault (``faults.py``).
Checks: a completed migration leaves the frozen source RAM and the destination's byte-identical;
a failed/cancelled one leaves the source running, its RAM untouched (idle guest), no IO after
the error on any link, the destination failed; threads and fds return to their baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from migemu.emulator.machine import Machine, MachineOptions
from migemu.emulator.migration import faults
from migemu.emulator.ram import GuestRAM, map_anonymous
from migemu.multifd.errors import PeerBroken

MIB = 1 << 20
DEADLINE_S = 30.0
POLL_S = 0.005
SETTLE_S = 10.0
FINAL = ("completed", "failed", "cancelled")


@dataclass
class Plan:
    """What one randomized migration does."""

    multifd: bool
    method: str
    channels: int
    rate: int  # guest pages dirtied per second (0: idle)
    bandwidth: int
    downtime: int
    action: str  # complete | cancel | fault
    cancel_after_s: float = 0.0
    fault: str | None = None

    def describe(self) -> str:
        extra = self.fault if self.action == "fault" else self.action
        return (
            f"multifd={self.multifd} {self.method}x{self.channels} rate={self.rate} "
            f"bw={self.bandwidth >> 20}M dt={self.downtime} {extra}"
        )


def draw_fault(rng: random.Random, channels: int) -> str:
    kind = rng.choice(["drop-channel", "close-main", "corrupt", "corrupt", "stall", "dst-exit"])
    at = rng.choice(["setup", "iterate", "switchover"])
    if kind == "dst-exit":
        return f"dst-exit,after={rng.randrange(0, 20)}"
    if kind == "close-main":
        return f"close-main,at={at},after={rng.randrange(0, 3)}"
    channel = rng.randrange(channels)
    after = rng.randrange(0, 4)
    if kind == "drop-channel":
        return f"drop-channel,channel={channel},at={at},after={after}"
    if kind == "stall":
        return f"stall,channel={channel},at={at},after={after},seconds={rng.choice([0.05, 0.3])}"
    what = rng.choice([w for w in faults.CORRUPTIONS if w != "random"])
    return f"corrupt,what={what},at={at},after={after}"


def draw_plan(rng: random.Random) -> Plan:
    multifd = rng.random() < 0.85
    channels = rng.randint(1, 4)
    bandwidth = rng.choice([0, 16 * MIB, 64 * MIB, 256 * MIB])
    limit = bandwidth or 512 * MIB
    rate = rng.choice([0, 0, 200, 2000, 8000])
    rate = min(rate, limit // 4096 // 4)  # keep it convergent
    roll = rng.random()
    action = "complete" if roll < 0.6 else "cancel" if roll < 0.75 else "fault"
    plan = Plan(
        multifd=multifd,
        method=rng.choice(["none", "zlib", "zstd"]),
        channels=channels,
        rate=rate,
        bandwidth=bandwidth or (1 << 40),
        downtime=rng.choice([1, 50, 300, 2000]),
        action=action,
        cancel_after_s=rng.uniform(0, 0.3),
    )
    if action == "fault":
        plan.fault = draw_fault(rng, channels if multifd else 1)
        if plan.method == "none" and "what=payload" in plan.fault:
            # Raw pages carry no checksum: flipped page data arrives as valid (QEMU's format
            # cannot tell), so the RAM check would flag the fault itself. Not drawn.
            plan.fault = plan.fault.replace("what=payload", "what=offset")
        if not multifd and not plan.fault.startswith(("close-main", "dst-exit")):
            plan.fault = "close-main,at=iterate"
    return plan


def fill_ram(mem: Any, rng: random.Random) -> None:
    """A mix of zero, repetitive and random pages (so every codec path and ZERO records run)."""
    gen = np.random.default_rng(rng.randrange(1 << 32))
    pages = len(mem) // 4096
    arr = np.frombuffer(mem, dtype=np.uint8).reshape(pages, 4096)
    kind = gen.integers(0, 4, size=pages)
    arr[kind == 0] = 0
    arr[kind == 1] = gen.integers(0, 256, size=(int((kind == 1).sum()), 4096), dtype=np.uint8)
    arr[kind == 2] = (np.arange(4096) % 251).astype(np.uint8)
    idx = np.flatnonzero(kind == 3)
    arr[idx] = 0
    arr[idx, ::512] = gen.integers(1, 256, size=(len(idx), 8), dtype=np.uint8)
    del arr


def _close_machine(machine: Machine) -> None:
    try:
        machine.close()
    except BufferError:  # a view of guest RAM still referenced: the mmap goes with the GC
        gc.collect()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Result:
    counts: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    ram_changed: int = 0
    io_after_error: int = 0
    leaks: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "migrations": sum(self.counts.values()),
            **dict(sorted(self.counts.items())),
            "mismatches": self.mismatches,
            "ram-changed-after-failure": self.ram_changed,
            "io-after-error": self.io_after_error,
            "leaks": self.leaks,
            "problems": self.errors[:20],
        }


class Soak:
    def __init__(self, seed: int, workdir: Path, sizes: list[int]) -> None:
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.sizes = sizes
        self.result = Result()
        self.src: Machine | None = None
        self.count = 0
        self.baseline: tuple[int, int] = (0, 0)
        faults.PLAN.exit = self._dst_exit
        faults.PLAN.verbose = False
        self.dst: Machine | None = None

    # -- machines ------------------------------------------------------------------------

    def _new_source(self) -> None:
        if self.src is not None:
            self._settle()
            _close_machine(self.src)
        size = self.rng.choice(self.sizes) * MIB
        ram = GuestRAM([map_anonymous("mem0", size)])
        fill_ram(ram.blocks[0].mem, self.rng)
        self.src = Machine(MachineOptions(prog_name="src"), ram)
        self.src.migrations.report = lambda text: None
        self.baseline = (threading.active_count(), _fds())

    def _new_destination(self, size: int) -> Machine:
        ram = GuestRAM([map_anonymous("mem0", size)])
        dst = Machine(
            MachineOptions(prog_name="dst", incoming="defer", start_paused=True, guest="idle"), ram
        )
        dst.migrations.report = lambda text: None
        return dst

    def _dst_exit(self, status: int) -> None:
        """dst-exit in-process: the destination dies -- its every connection drops at once."""
        dst = self.dst
        if dst is not None and dst.migrations.incoming is not None:
            dst.migrations.incoming.latch.fail(PeerBroken(f"destination exit({status})"))

    # -- one migration -------------------------------------------------------------------

    def run_one(self) -> None:
        if self.src is None or self.count % 100 == 0:
            self._new_source()
        assert self.src is not None
        src = self.src
        self.count += 1
        plan = draw_plan(self.rng)
        size = src.ram.total
        dst = self.dst = self._new_destination(size)
        sock = self.workdir / f"mig-{self.count}.sock"
        try:
            outcome = self._migrate(src, dst, plan, sock)
        except Exception as err:  # a hang or a bug: record it, go on with a fresh source
            outcome = "error"
            self.result.errors.append(f"#{self.count} {plan.describe()}: {err!r}")
            print(f"soak: {self.result.errors[-1]}", file=sys.stderr, flush=True)
            src.migrations.shutdown()  # abandon this source: stop its threads, then a new one
            if src.migrations.outgoing is not None:
                src.migrations.outgoing.thread.join(SETTLE_S)
            _close_machine(src)
            self.src = None
        finally:
            faults.clear()
            self._close_destination(dst)
            self.dst = None
        self.result.counts[outcome] += 1
        if self.src is not None:
            self._check_leaks(plan)

    def _migrate(self, src: Machine, dst: Machine, plan: Plan, sock: Path) -> str:
        def both(name: str, args: dict[str, Any]) -> None:
            src.dispatcher.execute(name, args)
            dst.dispatcher.execute(name, args)

        caps = [{"capability": "multifd", "state": plan.multifd}]
        both("migrate-set-capabilities", {"capabilities": caps})
        both(
            "migrate-set-parameters",
            {"multifd-channels": plan.channels, "multifd-compression": plan.method},
        )
        src.dispatcher.execute(
            "migrate-set-parameters",
            {"max-bandwidth": plan.bandwidth, "downtime-limit": plan.downtime},
        )
        guest = "idle" if plan.rate == 0 else f"dirty,rate={plan.rate},seed={self.count}"
        src.dispatcher.execute("x-migemu-set-guest", {"spec": guest})
        before = bytes(src.ram.blocks[0].mem) if plan.rate == 0 else None
        dst.dispatcher.execute("migrate-incoming", {"uri": f"unix:{sock}"})
        if plan.fault is not None:
            faults.inject(plan.fault)
        start = time.monotonic()
        src.dispatcher.execute("migrate", {"uri": f"unix:{sock}"})
        cancelled = False
        while True:
            status = src.migrations.query({}).get("status")
            if status in FINAL:
                break
            elapsed = time.monotonic() - start
            if plan.action == "cancel" and not cancelled and elapsed >= plan.cancel_after_s:
                src.dispatcher.execute("migrate_cancel", {})
                cancelled = True
            if elapsed > DEADLINE_S and not cancelled:
                # A guest that dirties faster than the link drains never converges (QEMU
                # 7.2 without auto-converge iterates for ever too): cancel, and count it.
                src.dispatcher.execute("migrate_cancel", {})
                cancelled = True
                plan.action = "no-convergence"
            if elapsed > DEADLINE_S + SETTLE_S:
                raise TimeoutError(f"source stuck in {status}")
            time.sleep(POLL_S)
        self._join(src, dst)
        dst_status = dst.migrations.destination.status.value
        if status == "completed" and dst_status == "completed":
            if bytes(src.ram.blocks[0].mem) != bytes(dst.ram.blocks[0].mem):
                self.result.mismatches += 1
                self.result.errors.append(f"#{self.count} RAM mismatch: {plan.describe()}")
            src.dispatcher.execute("cont", {})
            return "completed"
        if status == "completed":
            # No return path (QEMU 7.2 has none by default): the source may finish first.
            src.dispatcher.execute("cont", {})
            return "completed-destination-failed"
        self._check_failed(src, dst, plan, before)
        if plan.action == "no-convergence" and status == "cancelled":
            return "cancelled-no-convergence"
        return status

    def _join(self, src: Machine, dst: Machine) -> None:
        for mig in (src.migrations.outgoing, dst.migrations.incoming):
            if mig is not None:
                mig.thread.join(SETTLE_S)
                if mig.thread.is_alive():
                    raise TimeoutError(f"{mig.thread.name} still running")

    def _check_failed(self, src: Machine, dst: Machine, plan: Plan, before: bytes | None) -> None:
        if src.vm.state.value != "running":
            self.result.errors.append(f"#{self.count} source {src.vm.state.value} after failure")
        if before is not None and bytes(src.ram.blocks[0].mem) != before:
            self.result.ram_changed += 1
            self.result.errors.append(f"#{self.count} source RAM changed: {plan.describe()}")
        if dst.migrations.destination.status.value not in ("failed", "setup"):
            self.result.errors.append(
                f"#{self.count} destination {dst.migrations.destination.status.value}"
            )
        outgoing = src.migrations.outgoing
        latches = {id(outgoing.latch)} if outgoing is not None else set()
        if dst.migrations.incoming is not None:
            latches.add(id(dst.migrations.incoming.latch))
        with faults.PLAN.lock:
            records = [r for r in faults.PLAN.links if id(r.link.latch) in latches]
        late = sum(r.late_calls for r in records)
        if late:
            self.result.io_after_error += late
            self.result.errors.append(f"#{self.count} {late} IO calls after error")

    def _close_destination(self, dst: Machine) -> None:
        # Machine.close() does not wait for the incoming threads: stop them first, or a
        # receive thread still running writes into unmapped RAM.
        incoming = dst.migrations.incoming
        if incoming is not None:
            incoming.cancel()
            incoming.thread.join(SETTLE_S)
        dst.close()

    def _settle(self) -> tuple[int, int]:
        """Threads and fds once everything that is winding down has ended."""
        assert self.src is not None
        self.src.dispatcher.execute("x-migemu-set-guest", {"spec": "idle"})
        end = time.monotonic() + SETTLE_S
        while True:
            now = (threading.active_count(), _fds())
            if now == self.baseline or time.monotonic() > end:
                return now
            time.sleep(POLL_S)

    def _check_leaks(self, plan: Plan) -> None:
        now = self._settle()
        if now != self.baseline:
            self.result.leaks += 1
            self.result.errors.append(
                f"#{self.count} threads/fds {now} != baseline {self.baseline}: {plan.describe()}"
            )
            self.baseline = now

    def close(self) -> None:
        if self.src is not None:
            _close_machine(self.src)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="migemu soak", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--migrations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sizes", default="1,2,4,8", help="RAM sizes in MiB to draw from")
    parser.add_argument("--json", help="write the summary here too")
    parser.add_argument("--progress", type=int, default=50, help="print a line every N")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="migemu-soak-") as tmp:
        soak = Soak(args.seed, Path(tmp), sizes)
        started = time.monotonic()
        try:
            for i in range(args.migrations):
                soak.run_one()
                if args.progress and (i + 1) % args.progress == 0:
                    counts = dict(soak.result.counts)
                    print(f"{i + 1} migrations, {time.monotonic() - started:.0f} s: {counts}")
                    sys.stdout.flush()
        finally:
            soak.close()
        leftovers = os.listdir(tmp)
    summary = soak.result.summary()
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["seed"] = args.seed
    summary["leftover-files"] = len(leftovers)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    bad = summary["mismatches"] or summary["leaks"] or summary["io-after-error"] or leftovers
    return 1 if bad or soak.result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
