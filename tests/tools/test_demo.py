"""``migemu demo`` end to end on a small guest: its numbers are query-migrate's and the wire's.

Runs the real command (``python -m migemu demo --size 16M --json``): three migemu -> migemu
migrations through the byte-counting proxy. The JSON must agree with the final query-migrate
reply it carries and with the proxy's per-connection counts; without compression the multifd
connections carry exactly QEMU's multifd-bytes plus one 64-byte MultiFDInit per channel.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rich.console import Console

from migemu.tools import demo
from migemu.tools.migrate_runner import RunResult, RunSpec

MIB = 1 << 20
MULTIFD_INIT_BYTES = 64


@pytest.fixture(scope="module")
def demo_json():
    out = subprocess.run(
        [sys.executable, "-m", "migemu", "demo", "--size", "16M", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_demo_runs_every_method_and_verifies(demo_json):
    assert demo_json["ok"] is True
    assert demo_json["size"] == 16 * MIB and demo_json["channels"] == 2
    assert [r["spec"]["method"] for r in demo_json["runs"]] == ["none", "zlib", "zstd"]
    for run in demo_json["runs"]:
        assert run["status"] == "completed" and run["verified"] is True
        assert run["mismatch"] is None


def test_demo_numbers_are_query_migrates(demo_json):
    for run in demo_json["runs"]:
        qm = run["query_migrate"]
        ram = qm["ram"]
        assert qm["status"] == "completed"
        assert run["ram"] == ram
        assert run["total_time_ms"] == qm["total-time"] > 0
        assert run["downtime_ms"] == qm["downtime"]
        assert run["setup_time_ms"] == qm["setup-time"]
        assert run["iterations"] == ram["dirty-sync-count"] >= 2
        assert ram["total"] == 16 * MIB and ram["remaining"] == 0
        assert run["page_bytes"] == ram["normal-bytes"] == ram["normal"] * 4096
        assert run["wall_ms"] >= run["total_time_ms"] * 0.5
        assert set(run["cpu_s"]) == {"src", "dst"} and run["cpu_total"] > 0


def test_demo_wire_bytes_are_the_proxys(demo_json):
    for run in demo_json["runs"]:
        wire, ram = run["wire"], run["ram"]
        conns = wire["connections"]
        assert run["wire_bytes"] == wire["up_bytes"] == sum(c["up"] for c in conns)
        kinds = [c["kind"] for c in conns]
        assert kinds.count("main") == 1 and kinds.count("multifd") == 2
        multifd = sum(c["up"] for c in conns if c["kind"] == "multifd")
        main = sum(c["up"] for c in conns if c["kind"] == "main")
        # the main stream carries the RAM records QEMU counts, plus device state it does not
        assert main >= ram["transferred"] - ram["multifd-bytes"]
        if run["spec"]["method"] == "none":
            assert multifd == ram["multifd-bytes"] + 2 * MULTIFD_INIT_BYTES
        else:  # 7.2 counts pages before compression; the wire carried much less
            assert multifd < 0.7 * ram["multifd-bytes"]
        assert run["ratio"] == pytest.approx(run["page_bytes"] / run["wire_bytes"], abs=1e-4)


def test_demo_compression_pays_off(demo_json):
    ratio = {r["spec"]["method"]: r["ratio"] for r in demo_json["runs"]}
    assert 0.9 < ratio["none"] <= 1.0
    assert ratio["zlib"] > 1.5 and ratio["zstd"] > 1.5


def test_table_reports_a_verification_failure():
    spec = RunSpec(size=16 * MIB, method="zstd")
    good = RunResult(spec, "completed", total_time_ms=100, verified=True, wire={"up_bytes": 10})
    bad = RunResult(
        spec, "completed", total_time_ms=100, verified=False, wire={"up_bytes": 10},
        mismatch="content differs at byte 8192 (page 2)",
    )  # fmt: skip
    failed = RunResult(spec, "failed", error="Unable to write to socket: Broken pipe")
    console = Console(width=200, record=True)
    console.print(demo.table([good, bad, failed]))
    text = console.export_text()
    assert "✓" in text
    assert "✗ content differs at byte 8192 (page 2)" in text
    assert "✗ Unable to write to socket: Broken pipe" in text
    assert demo.as_json([good, bad], 0.0)["ok"] is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "12Q"], "--size: cannot read size"),
        (["--size", "1000K"], "not a whole number of MiB"),
        (["--methods", "none,lz4"], "unknown method 'lz4'"),
        (["--methods", "zstd,zstd"], "named twice"),
        (["--channels", "0"], "--channels must be between 1 and 255"),
        (["--zlib-level", "10"], "--zlib-level must be between 0 and 9"),
        (["--zstd-level", "-1"], "--zstd-level must be between 0 and 20"),
        (["--dirty-rate", "-5"], "--dirty-rate must not be negative"),
        (["--image", "photos"], "unknown kind 'photos'"),
    ],
)
def test_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
