"""Start-up benchmark: time from exec to the QMP greeting, migemu beside real QEMU (tools).

Each round starts ``migemu`` and ``qemu-system-x86_64`` (alternating which goes first) with
``-machine none -qmp unix:SOCK,server=on,wait=off``, connects as soon as the socket accepts,
and stops the clock when the greeting's line has arrived; then the process is ended by PID.
Medians of N rounds and their ratio go to stdout and, with ``--out``, to a JSON file.
Run: ``python -m migemu.tools.bench_startup --rounds 20 --out bench-results/startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEADLINE_S = 30.0


def time_to_greeting(argv: list[str], sock: Path) -> float:
    """Seconds from exec to a complete greeting line on ``sock``."""
    if sock.exists():
        sock.unlink()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, "-machine", "none", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(sock))
                break
            except OSError:
                s.close()
                if proc.poll() is not None or time.perf_counter() - start > DEADLINE_S:
                    raise RuntimeError(f"{argv[0]} did not start") from None
                time.sleep(0.0005)
        data = b""
        with s:
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"{argv[0]} closed the monitor")
                data += chunk
        return time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_startup", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    engines = {"migemu": [sys.executable, "-m", "migemu"]}
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        engines["qemu"] = [qemu, "-nodefaults", "-display", "none"]
    times: dict[str, list[float]] = {name: [] for name in engines}
    with tempfile.TemporaryDirectory(prefix="migemu-startup-") as tmp:
        sock = Path(tmp) / "m.sock"
        for r in range(args.rounds):
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            for name in order:
                times[name].append(time_to_greeting(engines[name], sock))
    result: dict[str, object] = {
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "median_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
        "min_ms": {k: round(min(v) * 1000, 1) for k, v in times.items()},
        "max_ms": {k: round(max(v) * 1000, 1) for k, v in times.items()},
    }
    if "qemu" in times:
        result["ratio_migemu_over_qemu"] = round(
            statistics.median(times["migemu"]) / statistics.median(times["qemu"]), 2
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
