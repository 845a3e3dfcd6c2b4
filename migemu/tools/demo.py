"""``migemu demo``: what multifd compression does to a realistic guest, in one command (tools).

Generates a seeded guest image (zero runs, code, text, sparse and random pages, ~40% zero),
then for each method (none, zlib, zstd by default) starts a migemu source and destination on
loopback, migrates through a byte-counting proxy with a progress bar fed by ``query-migrate``,
checks that the destination's RAM equals the source's, and prints one table: time, wire
bytes, compression ratio (page bytes / wire bytes), throughput, downtime, iterations.
``--json`` prints the same results, with the raw counters, for machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from migemu.tools.migrate_runner import (
    LEVEL_RANGE,
    METHODS,
    MIX_PRESETS,
    Runner,
    RunnerError,
    RunResult,
    RunSpec,
    interrupt_on_sigterm,
    parse_size,
)

DEFAULT_SIZE = "256M"
MB = 1_000_000
MIB = 1 << 20


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="migemu demo",
        description="Migrate a realistic guest between two local migemu processes with multifd "
        "none, zlib and zstd; show time, wire bytes and compression for each.",
    )
    ap.add_argument(
        "--size", default=DEFAULT_SIZE, help=f"guest RAM, e.g. 64M, 1G ({DEFAULT_SIZE})"
    )
    ap.add_argument("--channels", type=int, default=2, help="multifd channels (2)")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated, from none,zlib,zstd"
    )
    ap.add_argument("--zlib-level", type=int, default=None, help="0-9 (QEMU's default 1)")
    ap.add_argument("--zstd-level", type=int, default=None, help="0-20 (QEMU's default 1)")
    ap.add_argument(
        "--dirty-rate", type=int, default=0, help="pages/s the source guest writes (0: idle)"
    )
    ap.add_argument("--image", default="realistic", help=f"page mix: {', '.join(MIX_PRESETS)}")
    ap.add_argument("--seed", type=int, default=1, help="image and guest seed (1)")
    ap.add_argument("--json", action="store_true", help="print JSON results instead of a table")
    return ap


def specs_from_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[RunSpec]:
    """One RunSpec per method; bad options end with argparse's usage error (exit 2)."""
    try:
        size = parse_size(args.size)
    except ValueError as err:
        ap.error(f"--size: {err}")
    if size < MIB or size % MIB:
        ap.error(f"--size: {args.size} is not a whole number of MiB (at least 1M)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        ap.error("--methods: give at least one of none,zlib,zstd")
    for m in methods:
        if m not in METHODS:
            ap.error(f"--methods: unknown method {m!r} (choose from none,zlib,zstd)")
    if len(set(methods)) != len(methods):
        ap.error("--methods: a method is named twice")
    if not 1 <= args.channels <= 255:
        ap.error("--channels must be between 1 and 255")
    for method in ("zlib", "zstd"):
        level = getattr(args, f"{method}_level")
        lo, hi = LEVEL_RANGE[method]
        if level is not None and not lo <= level <= hi:
            ap.error(f"--{method}-level must be between {lo} and {hi}")
    if args.dirty_rate < 0:
        ap.error("--dirty-rate must not be negative")
    if args.image not in MIX_PRESETS:
        ap.error(f"--image: unknown kind {args.image!r} (choose from {', '.join(MIX_PRESETS)})")
    levels = {"none": None, "zlib": args.zlib_level, "zstd": args.zstd_level}
    return [
        RunSpec(
            size=size,
            method=m,
            channels=args.channels,
            level=levels[m],
            image=args.image,
            dirty_rate=args.dirty_rate,
            seed=args.seed,
        )
        for m in methods
    ]


class ProgressFeed:
    """Turns query-migrate replies into a rich progress bar: done = total - remaining."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress = progress
        self.task = task

    def __call__(self, info: dict[str, Any], elapsed_s: float) -> None:
        ram = info.get("ram") or {}
        total = ram.get("total") or self.progress.tasks[self.task].total
        remaining = ram.get("remaining", total)
        status = info.get("status", "")
        done = total if status == "completed" else max(0, total - remaining)
        self.progress.update(
            self.task,
            total=total,
            completed=done,
            status=status,
            moved=f"{ram.get('transferred', 0) / MB:,.0f} MB sent",
        )


def method_label(spec: RunSpec) -> str:
    return (
        spec.method
        if spec.effective_level is None
        else f"{spec.method} (level {spec.effective_level})"
    )


async def run_all(specs: list[RunSpec], console: Console | None) -> tuple[list[RunResult], float]:
    t0 = time.monotonic()
    results = []
    async with Runner() as runner:
        first = specs[0]
        if console is not None:
            with console.status(
                f"generating a {first.size >> 20} MiB {first.image} guest image (seed {first.seed})"
            ):
                await asyncio.to_thread(runner.image, first.size, first.image, first.seed)
        else:
            await asyncio.to_thread(runner.image, first.size, first.image, first.seed)
        gen_s = time.monotonic() - t0
        if console is None:
            for spec in specs:
                results.append(await runner.run(spec))
            return results, gen_s
        columns = (
            TextColumn("{task.description:18}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[moved]:>14}"),
            TextColumn("{task.fields[status]:10}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            for spec in specs:
                task = progress.add_task(
                    method_label(spec), total=spec.size, status="starting", moved=""
                )
                result = await runner.run(spec, ProgressFeed(progress, task))
                mark = "verified" if result.ok else "FAILED"
                progress.update(task, status=mark)
                results.append(result)
    return results, gen_s


def table(results: list[RunResult]) -> Table:
    first = results[0].spec
    dirty = f", guest dirtying {first.dirty_rate} pages/s" if first.dirty_rate else ""
    t = Table(
        box=box.SIMPLE_HEAD,
        collapse_padding=True,  # with the short headers below, the table fits 80 columns
        title=f"migemu -> migemu, {first.size >> 20} MiB {first.image} guest, "
        f"{first.channels} multifd channel{'s' if first.channels > 1 else ''}{dirty}",
        caption="time: query-migrate total-time; wire: bytes counted by a proxy; ratio: "
        "non-zero page bytes / wire bytes; throughput: guest RAM / time; iters: dirty syncs",
    )
    for name in ("method", "time", "wire", "ratio", "throughput", "downtime", "iters"):
        t.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
    t.add_column("verified", justify="center")
    for r in results:
        if r.status != "completed":
            t.add_row(method_label(r.spec), "–", "–", "–", "–", "–", "–", f"✗ {r.error}")
            continue
        t.add_row(
            method_label(r.spec),
            f"{r.total_time_ms / 1000:.2f} s",
            f"{r.wire_bytes / MB:,.1f} MB",
            f"{r.ratio:.2f}",
            f"{r.ram_rate / MIB:,.0f} MiB/s",
            f"{r.downtime_ms} ms",
            str(r.iterations),
            "[green]✓[/]" if r.verified else f"[red]✗ {r.mismatch}[/]",
        )
    return t


def as_json(results: list[RunResult], gen_s: float) -> dict[str, Any]:
    first = results[0].spec
    return {
        "size": first.size,
        "image": first.image,
        "channels": first.channels,
        "dirty_rate": first.dirty_rate,
        "seed": first.seed,
        "image_seconds": round(gen_s, 3),
        "runs": [r.as_dict() for r in results],
        "ok": all(r.ok for r in results),
    }


def main(argv: list[str]) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    specs = specs_from_args(ap, args)
    console = None if args.json else Console(stderr=False)
    interrupt_on_sigterm()
    try:
        results, gen_s = asyncio.run(run_all(specs, console))
    except KeyboardInterrupt:
        print("migemu demo: interrupted", file=sys.stderr)
        return 130
    except RunnerError as err:
        print(f"migemu demo: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(as_json(results, gen_s), indent=1))
    else:
        assert console is not None
        console.print(table(results))
        if not all(r.ok for r in results):
            console.print("[red]some migrations failed or did not verify[/]")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
