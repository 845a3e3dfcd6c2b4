"""``migemu bench``: a tiny real matrix (with QEMU 7.2 when installed) and its summaries."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

import pytest

from migemu.tools import bench
from migemu.tools.migrate_runner import RunResult, RunSpec

QEMU = shutil.which("qemu-system-x86_64")


def test_tiny_matrix_writes_json_table_and_plots(tmp_path):
    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "migemu", "bench", "--size", "8M", "--methods", "zstd"]
    argv += ["--channels", "1", "--repeats", "2", "--out", str(out), "--quiet-wait", "0"]
    if QEMU is not None:
        argv.append("--vs-qemu")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "bench.json").read_text())
    engines = ["migemu", "qemu"] if QEMU else ["migemu"]
    assert len(data["runs"]) == 2 * len(engines)
    assert [c["cell"] for c in data["cells"]] == ["realistic/zstd-1/x1"]
    for cell in data["cells"]:
        for engine in engines:
            runs = [r for r in data["runs"] if r["cell"] == cell["cell"] and r["engine"] == engine]
            s = cell[engine]
            assert s["ok"] == s["runs"] == 2 and s["verified"]
            times = [r["total_time_ms"] for r in runs]
            assert s["total_time_ms"]["median"] == statistics.median(times)
            assert s["total_time_ms"]["min"] == min(times)
            assert s["wire_bytes"]["max"] == max(r["wire_bytes"] for r in runs)
        if QEMU:
            want = (
                cell["migemu"]["total_time_ms"]["median"] / cell["qemu"]["total_time_ms"]["median"]
            )
            assert cell["vs_qemu"]["total_time_ms"] == pytest.approx(want, abs=1e-3)
            pairs = [
                m["total_time_ms"] / q["total_time_ms"]
                for m, q in zip(
                    [r for r in data["runs"] if r["engine"] == "migemu"],
                    [r for r in data["runs"] if r["engine"] == "qemu"],
                    strict=True,
                )
            ]
            got = cell["vs_qemu_pairs"]["total_time_ms"]
            assert got["min"] == pytest.approx(min(pairs), abs=1e-3)
            assert got["max"] == pytest.approx(max(pairs), abs=1e-3) and got["n"] == 2
    quiet = data["meta"]["quiet"]
    assert quiet["waited_s"] < 1 and quiet["threshold"] == 0.3
    assert quiet["quiet"] == (quiet["load"] < 0.3)
    if QEMU:  # interleaved: the engines alternate, starting order flipping per repeat
        order = [r["engine"] for r in data["runs"]]
        assert order == ["migemu", "qemu", "qemu", "migemu"]
    table = (out / "bench.md").read_text()
    assert "| realistic | 0 | zstd | 1 | 1 |" in table and "✓ 2/2" in table
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (out / "bench.svg").read_bytes()[:2000]
    # --report renders the same table again from bench.json alone
    (out / "bench.md").unlink()
    assert bench.main(["--report", "--out", str(out)]) == 0
    assert (out / "bench.md").read_text() == table


def fake(total_ms: int, ok: bool = True) -> RunResult:
    return RunResult(
        RunSpec(size=1 << 20, method="zlib"),
        "completed",
        total_time_ms=total_ms,
        verified=ok,
        mismatch=None if ok else "content differs at byte 0 (page 0)",
        wire={"up_bytes": 1000},
        ram={"normal-bytes": 2000},
    )


def test_run_result_round_trip():
    result = fake(120)
    result.cpu_s = {"src": 1.5, "dst": 0.25}
    again = RunResult.from_dict(json.loads(json.dumps(result.as_dict())))
    assert again.as_dict() == result.as_dict()
    assert again.cpu_total == 1.75 and again.ratio == 2.0


def test_pair_ratios_pair_runs_of_the_same_repeat_and_skip_failed_pairs():
    mig = [fake(100), fake(300), fake(90, ok=False)]
    qemu = [fake(200), fake(200), fake(100)]
    for r, dst in zip(mig + qemu, [1.0, 3.0, 9.0, 2.0, 2.0, 2.0], strict=True):
        r.cpu_s = {"src": 1.0, "dst": dst}
    ratios = bench.pair_ratios(mig, qemu)
    assert ratios["total_time_ms"]["min"] == 0.5 and ratios["total_time_ms"]["max"] == 1.5
    assert ratios["total_time_ms"]["n"] == 2  # the third pair failed on the migemu side
    assert ratios["dst_cpu_s"]["median"] == 1.0 and ratios["dst_cpu_s"]["min"] == 0.5
    assert bench.pair_ratios([], qemu) == {}


def test_markdown_quotes_pair_spread_and_quietness():
    meta = {"date": "d", "size": 8 << 20, "cpus": 2, "qemu": "QEMU 7.2"}
    meta["quiet"] = {"threshold": 0.3, "quiet": False, "waited_s": 300.0, "load": 1.5}
    row = {"cell": "c", "image": "realistic", "dirty_rate": 0, "method": "zlib", "level": 1}
    row |= {"channels": 2, "migemu": bench.summarise(None, [fake(100), fake(300)])}
    row["qemu"] = bench.summarise(None, [fake(200), fake(200)])
    row["vs_qemu"] = {"total_time_ms": 1.0}
    row["vs_qemu_pairs"] = {"total_time_ms": bench.spread([0.5, 1.5])}
    table = bench.markdown(meta, [row], ["migemu", "qemu"])
    assert "1.00× (0.50–1.50)" in table
    assert "NOT quiet" in table and "Load at start 1.50" in table


def test_spread():
    s = bench.spread([5.0, 1.0, 3.0, 9.0])
    assert s == {"median": 4.0, "min": 1.0, "max": 9.0, "iqr": 3.5, "n": 4}
    assert bench.spread([7.0])["iqr"] == 0
    assert bench.spread([]) == {}


def test_summary_keeps_failures_out_of_the_medians():
    cell = bench.Cell("realistic", 0, "zlib", 1, 2)
    s = bench.summarise(cell, [fake(100), fake(300), fake(50, ok=False)])
    assert s["runs"] == 3 and s["ok"] == 2 and not s["verified"]
    assert s["total_time_ms"]["median"] == 200
    assert s["ratio"]["median"] == 2.0
    assert s["errors"] == ["content differs at byte 0 (page 0)"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "lzo"], "unknown 'lzo'"),
        (["--zlib-levels", "1,12"], "outside 0..9"),
        (["--channels", "0"], "between 1 and 255"),
        (["--repeats", "0"], "at least 1"),
        (["--images", "photos"], "unknown 'photos'"),
        (["--size", "1500K"], "whole number of MiB"),
    ],
)
def test_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
