"""Run QEMU's own ``migration-test`` case by case against migemu and/or real QEMU (tools layer).

``migration-test`` (built from QEMU's source, outside this repository) starts the binary named
by ``QTEST_QEMU_BINARY`` twice per case. This tool lists its cases (``-l``), runs each one
alone (``-p CASE``) with a time limit, against migemu (through a wrapper script whose name
ends in ``-system-x86_64``, as libqtest derives the target from the name) and against real
QEMU, interleaved case by case so that both see the same host load, and writes one JSON file
with each case's result and wall time per binary, plus the host's load average.

    python -m migemu.tools.qtest_suite --migration-test PATH [--against migemu,qemu]
        [--cases SUBSTRING ...] [--timeout S] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TIMEOUT_S = 120.0


@dataclass
class CaseResult:
    case: str
    binary: str
    result: str  # "pass" | "fail" | "timeout" | "skip"
    seconds: float
    tail: str


def list_cases(migration_test: Path, binary: str) -> list[str]:
    env = dict(os.environ, QTEST_QEMU_BINARY=binary)
    out = subprocess.run(
        [str(migration_test), "-l"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if line.startswith("/")]


def migemu_wrapper(directory: Path, python: str = sys.executable) -> Path:
    """A script named like a QEMU system binary that execs migemu (libqtest reads the arch)."""
    path = directory / "migemu-system-x86_64"
    path.write_text(f'#!/bin/sh\nexec {python} -m migemu "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def run_case(
    migration_test: Path, binary: str, label: str, case: str, timeout_s: float
) -> CaseResult:
    env = dict(os.environ, QTEST_QEMU_BINARY=binary)
    start = time.monotonic()
    # A new session so that a timeout ends migration-test and the processes it started.
    proc = subprocess.Popen(
        [str(migration_test), "-p", case],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        result = "pass" if proc.returncode == 0 else "fail"
        if proc.returncode == 0 and "# SKIP" in out:
            result = "skip"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        result = "timeout"
    seconds = time.monotonic() - start
    tail = "\n".join(out.strip().splitlines()[-6:])
    return CaseResult(case, label, result, round(seconds, 2), tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--migration-test", type=Path, required=True)
    ap.add_argument("--against", default="migemu,qemu", help="comma list: migemu, qemu")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "")
    ap.add_argument("--cases", nargs="*", default=[], help="substrings; a case runs if any matches")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    against = [a for a in args.against.split(",") if a]
    with tempfile.TemporaryDirectory(prefix="migemu-qtest-suite-") as tmp:
        binaries = {"migemu": str(migemu_wrapper(Path(tmp))), "qemu": args.qemu}
        cases = list_cases(args.migration_test, binaries[against[0]])
        if args.cases:
            cases = [c for c in cases if any(s in c for s in args.cases)]
        results: list[CaseResult] = []
        for case in cases:
            for label in against:
                r = run_case(args.migration_test, binaries[label], label, case, args.timeout)
                results.append(r)
                print(f"{r.result:8} {r.seconds:7.2f}s  {label:6}  {case}", flush=True)
    summary = {}
    for label in against:
        mine = [r for r in results if r.binary == label]
        summary[label] = {
            "passed": sum(r.result == "pass" for r in mine),
            "cases": len(mine),
            "seconds": round(sum(r.seconds for r in mine), 1),
        }
        print(
            f"{label}: {summary[label]['passed']}/{len(mine)} passed, {summary[label]['seconds']} s"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "loadavg_start_end": os.getloadavg(),
                    "summary": summary,
                    "results": [asdict(r) for r in results],
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
