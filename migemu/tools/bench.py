"""``migemu bench``: a matrix of measured migrations, with medians, spread and plots (tools layer).

The matrix is image kind × dirty rate × compression method × level × channels; each cell runs
``--repeats`` times through ``migrate_runner`` (repeats are the outer loop, so slow drifts of
the machine spread over all cells). ``--vs-qemu`` runs every cell on real QEMU 7.2 too,
interleaved with migemu (the order alternates per repeat), and reports migemu/QEMU per cell.
Writes ``bench.json`` (every run and the per-cell summary), ``bench.md`` (a Markdown table)
and ``bench.png`` / ``bench.svg`` (time and wire bytes per cell) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from migemu.tools.hostload import QUIET_LOAD, QUIET_WAIT_S, wait_for_quiet
from migemu.tools.migrate_runner import (
    DEFAULT_LEVEL,
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

MB = 1_000_000
# Numbers summarised per cell: (JSON key, RunResult attribute)
METRICS = (
    ("wall_ms", "wall_ms"),
    ("total_time_ms", "total_time_ms"),
    ("downtime_ms", "downtime_ms"),
    ("setup_time_ms", "setup_time_ms"),
    ("iterations", "iterations"),
    ("wire_bytes", "wire_bytes"),
    ("ratio", "ratio"),
    ("cpu_s", "cpu_total"),
    ("src_cpu_s", "cpu_src"),
    ("dst_cpu_s", "cpu_dst"),
)


@dataclass(frozen=True)
class Cell:
    """One setting of the matrix (engine aside)."""

    image: str
    dirty_rate: int
    method: str
    level: int | None
    channels: int

    @property
    def key(self) -> str:
        level = f"-{self.level}" if self.level is not None else ""
        dirty = f"/dirty{self.dirty_rate}" if self.dirty_rate else ""
        return f"{self.image}{dirty}/{self.method}{level}/x{self.channels}"

    def spec(self, size: int, seed: int, engine: str) -> RunSpec:
        return RunSpec(
            size=size,
            method=self.method,
            channels=self.channels,
            level=self.level,
            image=self.image,
            dirty_rate=self.dirty_rate,
            seed=seed,
            engine=engine,
        )


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the interquartile range of some measurements."""
    xs = sorted(values)
    if not xs:
        return {}
    if len(xs) > 1:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "iqr": q3 - q1,
        "n": len(xs),
    }


def summarise(cell: Cell, runs: Sequence[RunResult]) -> dict[str, Any]:
    ok = [r for r in runs if r.ok]
    out: dict[str, Any] = {
        "runs": len(runs),
        "ok": len(ok),
        "verified": bool(runs) and all(r.verified for r in runs),
        "errors": sorted({r.error or r.mismatch or "" for r in runs if not r.ok} - {""}),
    }
    for key, attr in METRICS:
        out[key] = spread([float(getattr(r, attr)) for r in ok])
    return out


def matrix(args: argparse.Namespace) -> list[Cell]:
    levels: dict[str, list[int | None]] = {
        "none": [None],
        "zlib": list(args.zlib_levels),
        "zstd": list(args.zstd_levels),
    }
    cells = []
    for image, dirty, method, channels in itertools.product(
        args.images, args.dirty_rates, args.methods, args.channels
    ):
        for level in levels[method]:
            cells.append(Cell(image, dirty, method, level, channels))
    return cells


def host_info() -> dict[str, Any]:
    qemu = shutil.which("qemu-system-x86_64")
    qemu_version = None
    if qemu:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
        qemu_version = out.stdout.splitlines()[0] if out.stdout else None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "qemu": qemu_version,
        "migemu_commit": commit or os.environ.get("MIGEMU_COMMIT"),
        "loadavg_start": os.getloadavg(),
    }


class Bench:
    """Runs the matrix and keeps every result; ``write()`` saves what exists so far."""

    def __init__(
        self,
        cells: list[Cell],
        engines: list[str],
        meta: dict[str, Any],
        console: Console,
        args: argparse.Namespace | None = None,
    ) -> None:
        self.cells = cells
        self.engines = engines
        self.meta = meta
        self.console = console
        self.args = args  # what run() needs: size, seed, repeats, timeout, no_proxy, out
        self.results: dict[tuple[str, str], list[RunResult]] = {}
        self.runs: list[dict[str, Any]] = []

    @classmethod
    def from_args(cls, args: argparse.Namespace, console: Console) -> Bench:
        engines = ["migemu", "qemu"] if args.vs_qemu else ["migemu"]
        meta = host_info() | {"argv": sys.argv[1:], "size": args.size}
        return cls(matrix(args), engines, meta, console, args)

    @classmethod
    def load(cls, path: Path, console: Console) -> Bench:
        """A bench from its ``bench.json`` (to render the table and plots again)."""
        data = json.loads(path.read_text())
        cells = [
            Cell(c["image"], c["dirty_rate"], c["method"], c["level"], c["channels"])
            for c in data["cells"]
        ]
        engines = [e for e in ("migemu", "qemu") if any(r["engine"] == e for r in data["runs"])]
        bench = cls(cells, engines, data["meta"], console)
        for run in data["runs"]:
            result = RunResult.from_dict(run)
            bench.results.setdefault((run["cell"], run["engine"]), []).append(result)
            keys = ("cell", "engine", "repeat", "loadavg")
            bench.runs.append({k: run[k] for k in keys} | result.as_dict())
        return bench

    def plan(self) -> list[tuple[int, Cell, str]]:
        assert self.args is not None
        steps = []
        for rep in range(self.args.repeats):
            for cell in self.cells:
                engines = self.engines if rep % 2 == 0 else self.engines[::-1]
                for engine in engines:
                    if engine == "qemu" and cell.dirty_rate:
                        continue  # QEMU -machine none runs no guest that could dirty memory
                    steps.append((rep, cell, engine))
        return steps

    async def run(self) -> None:
        assert self.args is not None
        steps = self.plan()
        out = self.args.out
        async with Runner(proxy=not self.args.no_proxy) as runner:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=self.console, transient=False) as progress:
                task = progress.add_task("bench", total=len(steps))
                for rep, cell, engine in steps:
                    progress.update(task, description=f"{engine:6} {cell.key} #{rep + 1}")
                    spec = cell.spec(self.args.size, self.args.seed, engine)
                    load = os.getloadavg()[0]
                    result = await runner.run(spec, timeout_s=self.args.timeout)
                    self.results.setdefault((cell.key, engine), []).append(result)
                    self.runs.append(
                        {"cell": cell.key, "engine": engine, "repeat": rep, "loadavg": load}
                        | result.as_dict()
                    )
                    mark = "✓" if result.ok else f"✗ {result.error or result.mismatch}"
                    progress.console.print(
                        f"{engine:6} {cell.key:32} #{rep + 1}: total-time "
                        f"{result.total_time_ms} ms, wall {result.wall_ms:.0f} ms, wire "
                        f"{result.wire_bytes / MB:.1f} MB, load {load:.1f} {mark}",
                        highlight=False,
                    )
                    progress.advance(task)
                    if out is not None:
                        self.write(out, plot=False)

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for cell in self.cells:
            row: dict[str, Any] = {
                "cell": cell.key,
                "image": cell.image,
                "dirty_rate": cell.dirty_rate,
                "method": cell.method,
                "level": cell.level,
                "channels": cell.channels,
            }
            for engine in self.engines:
                runs = self.results.get((cell.key, engine), [])
                if runs:
                    row[engine] = summarise(cell, runs)
            mig, qemu = row.get("migemu"), row.get("qemu")
            if mig and qemu:
                row["vs_qemu"] = {
                    key: _ratio(mig[key].get("median"), qemu[key].get("median"))
                    for key in RATIO_KEYS
                }
                row["vs_qemu_pairs"] = pair_ratios(
                    self.results.get((cell.key, "migemu"), []),
                    self.results.get((cell.key, "qemu"), []),
                )
            rows.append(row)
        return rows

    def write(self, out: Path, plot: bool = True) -> None:
        out.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        meta = {"loadavg_end": os.getloadavg()} | self.meta
        data = {"meta": meta, "cells": summary, "runs": self.runs}
        (out / "bench.json").write_text(json.dumps(data, indent=1) + "\n")
        (out / "bench.md").write_text(markdown(meta, summary, self.engines))
        if plot:
            write_plot(out, summary, self.engines)


RATIO_KEYS = ("total_time_ms", "wall_ms", "wire_bytes", "cpu_s", "dst_cpu_s")


def pair_ratios(
    migemu: Sequence[RunResult], qemu: Sequence[RunResult]
) -> dict[str, dict[str, float]]:
    """migemu/QEMU ratio of each interleaved pair (same repeat), as a spread per metric.

    The ratio of medians hides how much the pairs disagree; the pairs' own min-max shows it.
    A pair counts only when both of its runs succeeded.
    """
    pairs = [(m, q) for m, q in zip(migemu, qemu, strict=False) if m.ok and q.ok]
    out: dict[str, dict[str, float]] = {}
    for key in RATIO_KEYS:
        attr = dict(METRICS).get(key, key)
        values = [
            float(getattr(m, attr)) / float(getattr(q, attr))
            for m, q in pairs
            if getattr(q, attr, None)
        ]
        if values:
            out[key] = {k: round(v, 3) for k, v in spread(values).items()}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _fmt_ms(s: dict[str, float]) -> str:
    if not s:
        return "–"
    return f"{s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f})"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], engines: Sequence[str]) -> str:
    """The per-cell table: medians with (min–max) over the repeats."""
    lines = [
        f"migemu bench, {meta['date']}, {meta['size'] >> 20} MiB guest, host {meta['cpus']} CPUs,"
        f" {meta.get('qemu') or 'no QEMU'}; times are medians (min–max) in ms; CPU s: source +"
        " destination CPU seconds; × QEMU: migemu median / QEMU median.",
        "",
    ]
    quiet = meta.get("quiet")
    if quiet:
        lines[0] += (
            f" Load at start {quiet['load']:.2f} ({'quiet' if quiet['quiet'] else 'NOT quiet'}:"
            f" threshold {quiet['threshold']}, waited {quiet['waited_s']:.0f} s)."
        )
        lines[0] += " × QEMU cells: ratio of medians (min–max of the interleaved pairs' ratios)."
    head = ["image", "dirty/s", "method", "level", "ch", "total-time", "wall", "downtime"]
    head += ["iter", "wire MB", "ratio", "CPU s", "verified"]
    if "qemu" in engines:
        head += ["QEMU total-time", "QEMU wall", "QEMU wire MB", "QEMU CPU s"]
        head += ["× QEMU (total-time)", "× QEMU (wall)", "× QEMU (CPU)", "× QEMU (dst CPU)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        mig = row.get("migemu", {})
        cells = [
            row["image"],
            str(row["dirty_rate"]),
            row["method"],
            "–" if row["level"] is None else str(row["level"]),
            str(row["channels"]),
        ]
        cells += [_fmt_ms(mig.get(k, {})) for k in ("total_time_ms", "wall_ms", "downtime_ms")]
        cells += [_median(mig, "iterations", "{:.0f}"), _median(mig, "wire_bytes", "{:.1f}", MB)]
        cells += [_median(mig, "ratio", "{:.2f}"), _median(mig, "cpu_s", "{:.1f}")]
        cells += [f"{'✓' if mig.get('verified') else '✗'} {mig.get('ok', 0)}/{mig.get('runs', 0)}"]
        if "qemu" in engines:
            q = row.get("qemu", {})
            vs = row.get("vs_qemu", {})
            cells += [_fmt_ms(q.get("total_time_ms", {})), _fmt_ms(q.get("wall_ms", {}))]
            cells += [_median(q, "wire_bytes", "{:.1f}", MB), _median(q, "cpu_s", "{:.1f}")]
            pairs = row.get("vs_qemu_pairs", {})
            cells += [_x(vs.get(k), pairs.get(k)) for k in ("total_time_ms", "wall_ms", "cpu_s")]
            cells += [
                _x(_ratio(_med(mig, "dst_cpu_s"), _med(q, "dst_cpu_s")), pairs.get("dst_cpu_s"))
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _median(summary: dict[str, Any], key: str, fmt: str, scale: float = 1) -> str:
    s = summary.get(key, {})
    return fmt.format(s["median"] / scale) if s else "–"


def _med(summary: dict[str, Any], key: str) -> float | None:
    return summary.get(key, {}).get("median")


def _x(v: float | None, pairs: dict[str, float] | None = None) -> str:
    if v is None:
        return "–"
    if pairs and pairs.get("n", 0) > 1:
        return f"{v:.2f}× ({pairs['min']:.2f}–{pairs['max']:.2f})"
    return f"{v:.2f}×"


def write_plot(out: Path, rows: list[dict[str, Any]], engines: Sequence[str]) -> None:
    """Two panels: total-time and wire bytes per cell, one bar per engine, min–max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["cell"] for r in rows]
    n = len(rows)
    width = 0.8 / len(engines)
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.6 * n * len(engines) + 3), 8), sharex=True)
    panels = (("total_time_ms", "total-time (ms)", 1), ("wire_bytes", "wire bytes (MB)", MB))
    for ax, (key, title, scale) in zip(axes, panels, strict=True):
        for i, engine in enumerate(engines):
            med, lo, hi, xs = [], [], [], []
            for j, row in enumerate(rows):
                s = row.get(engine, {}).get(key, {})
                if not s:
                    continue
                xs.append(j + (i - (len(engines) - 1) / 2) * width)
                med.append(s["median"] / scale)
                lo.append((s["median"] - s["min"]) / scale)
                hi.append((s["max"] - s["median"]) / scale)
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=engine)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    axes[-1].set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    fig.suptitle("migemu bench: median total-time and wire bytes per setting (whiskers: min–max)")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"bench.{ext}", dpi=110)
    plt.close(fig)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from err


def _names(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {name!r} (choose from {', '.join(choices)})"
                )
        return names

    return parse


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="migemu bench",
        description="Measure multifd migrations over a matrix of settings (migemu -> migemu, "
        "and real QEMU 7.2 with --vs-qemu).",
    )
    ap.add_argument("--size", type=_size, default=parse_size("256M"), help="guest RAM (256M)")
    ap.add_argument("--methods", type=_names(METHODS), default=list(METHODS))
    ap.add_argument("--zlib-levels", type=_int_list, default=[DEFAULT_LEVEL["zlib"]])
    ap.add_argument("--zstd-levels", type=_int_list, default=[DEFAULT_LEVEL["zstd"]])
    ap.add_argument("--channels", type=_int_list, default=[1, 2, 4])
    ap.add_argument("--images", type=_names(list(MIX_PRESETS)), default=["realistic"])
    ap.add_argument("--dirty-rates", type=_int_list, default=[0], help="pages/s, 0 = idle")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vs-qemu", action="store_true", help="run each cell on QEMU 7.2 too")
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=QUIET_LOAD,
        help=f"1-minute load average the host must fall below before measuring ({QUIET_LOAD})",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help=f"seconds to wait for that (default {QUIET_WAIT_S:.0f} with --vs-qemu, else 0)",
    )
    ap.add_argument("--no-proxy", action="store_true", help="no wire-byte proxy (timing only)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    ap.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory")
    ap.add_argument(
        "--report", action="store_true", help="only render OUT/bench.json again (table, plots)"
    )
    return ap


def check(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    for method in ("zlib", "zstd"):
        lo, hi = LEVEL_RANGE[method]
        for level in getattr(args, f"{method}_levels"):
            if not lo <= level <= hi:
                ap.error(f"--{method}-levels: {level} is outside {lo}..{hi}")
    if not args.channels or any(not 1 <= c <= 255 for c in args.channels):
        ap.error("--channels: each count must be between 1 and 255")
    if any(d < 0 for d in args.dirty_rates):
        ap.error("--dirty-rates must not be negative")
    if args.size % (1 << 20) or args.size <= 0:
        ap.error("--size must be a positive whole number of MiB")
    if args.vs_qemu and shutil.which("qemu-system-x86_64") is None:
        ap.error("--vs-qemu needs qemu-system-x86_64 on PATH")


def main(argv: list[str]) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    if args.report:
        loaded = Bench.load(args.out / "bench.json", console)
        loaded.write(args.out)
        print(markdown(loaded.meta, loaded.summary(), loaded.engines))
        return 0
    check(ap, args)
    bench = Bench.from_args(args, console)
    wait_s = args.quiet_wait if args.quiet_wait is not None else QUIET_WAIT_S * args.vs_qemu
    quiet = wait_for_quiet(args.quiet_load, wait_s)
    bench.meta["quiet"] = quiet.as_dict()
    console.print(quiet.describe(), style=None if quiet.quiet else "yellow")
    interrupt_on_sigterm()
    try:
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        console.print("interrupted: writing the runs so far")
        bench.write(args.out)
        return 130
    except RunnerError as err:
        console.print(f"migemu bench: {err}", style="red")
        return 1
    bench.write(args.out)
    console.print(f"wrote {args.out}/bench.json, bench.md, bench.png, bench.svg")
    print(markdown(bench.meta, bench.summary(), bench.engines))
    failed = sum(1 for runs in bench.results.values() for r in runs if not r.ok)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
