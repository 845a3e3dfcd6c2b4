"""The pytest plugin as users meet it: their test files run by pytest in a subprocess (the
plugin loaded from its ``pytest11`` entry point), in strict and auto asyncio mode, with the
markers and ``--migemu-against``; and a failing test leaves no process and no file behind."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
from testing_support import PYTHON, run_pytest

HAVE_QEMU = shutil.which("qemu-system-x86_64") is not None

FAILING = """
import pytest

@pytest.mark.asyncio
async def test_fails_mid_migration(migemu_pair):
    await migemu_pair.migrate({"events": True}, {"max-bandwidth": 1 << 20})
    await migemu_pair.wait_for_status("active")
    assert False, "the user's assertion"

@pytest.mark.asyncio
async def test_fails_with_vms_from_the_factory(migemu_vm):
    await migemu_vm(memory="32M")
    await migemu_vm(memory="32M", incoming="defer")
    raise RuntimeError("boom")

@pytest.mark.asyncio
async def test_times_out(migemu_pair):
    await migemu_pair.migrate(parameters={"max-bandwidth": 1 << 20})
    await migemu_pair.wait_for_status("completed", timeout=0.3)

@pytest.mark.asyncio
@pytest.mark.migemu_pair(source_args=["-no-such-option"])
async def test_setup_error(migemu_pair):
    pass
"""


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_failing_tests_leave_nothing_behind(tmp_path):
    tests, scratch = tmp_path / "tests", tmp_path / "s"
    tests.mkdir()
    scratch.mkdir()
    (tests / "test_user.py").write_text(FAILING)
    counts, out = run_pytest(
        PYTHON, tests, "--basetemp", str(tmp_path / "basetemp"), env={"TMPDIR": str(scratch)}
    )
    assert counts == {"failed": 3, "error": 1}, out
    assert "AssertionError: the user's assertion" in out
    assert "RuntimeError: boom" in out
    assert "source: migration status not completed after 0.3 s (status 'active'" in out
    assert "-no-such-option" in out  # the start error carries the process's message
    assert list(scratch.iterdir()) == []  # no socket, RAM file or log left
    assert processes_mentioning(str(scratch)) == []


def test_auto_mode_and_knobs(tmp_path):
    (tmp_path / "test_auto.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.parametrize("migemu_method", ["none", "zstd"])
            @pytest.mark.parametrize("migemu_pair", [{"memory": "32M"}], indirect=True)
            async def test_migrates(migemu_pair, migemu_method, migemu_profile):
                assert migemu_profile == "7.2"
                await migemu_pair.migrate({"events": True})
                info = await migemu_pair.wait_for_status("completed", timeout=30)
                assert info["ram"]["total"] == 32 << 20
                assert info["ram"]["multifd-bytes"] > 0
                assert migemu_pair.ram_equal()

            async def test_vm_factory(migemu_vm):
                vm = await migemu_vm(memory="48M")
                assert (await vm.qmp.execute("query-status"))["status"] == "running"
                assert vm.ram.stat().st_size == 48 << 20

            @pytest.mark.parametrize("migemu_profile", ["9.0"])
            async def test_unknown_profile(migemu_pair):
                pass
            """
        )
    )
    counts, out = run_pytest(PYTHON, tmp_path, "-o", "asyncio_mode=auto")
    assert counts == {"passed": 3, "error": 1}, out
    assert "unknown migemu profile '9.0'" in out


MARKERS = """
import pytest

@pytest.mark.asyncio
@pytest.mark.migemu_only(reason="checks a migemu dashboard")
async def test_marked(migemu_vm):
    await migemu_vm()

@pytest.mark.asyncio
async def test_x_command(migemu_vm):
    vm = await migemu_vm(memory="32M")
    await vm.qmp.execute("x-migemu-query-links")

@pytest.mark.asyncio
async def test_plain(migemu_vm, migemu_backend):
    vm = await migemu_vm(memory="32M")
    version = await vm.qmp.execute("query-version")
    assert version["qemu"]["major"] == 7 and version["qemu"]["minor"] == 2
    print("BACKEND", migemu_backend, version["package"])

@pytest.mark.asyncio
@pytest.mark.migemu_against("migemu", "qemu")
async def test_both(migemu_vm, migemu_backend):
    await migemu_vm(memory="32M")
"""


@pytest.mark.skipif(not HAVE_QEMU, reason="QEMU not installed")
def test_against_qemu_skips_what_qemu_lacks(tmp_path):
    (tmp_path / "test_markers.py").write_text(MARKERS)
    counts, out = run_pytest(PYTHON, tmp_path, "--migemu-against=qemu", "-s")
    assert counts == {"passed": 3, "skipped": 2}, out
    assert "migemu-only test, not run against real QEMU: checks a migemu dashboard" in out
    assert "x-migemu-query-links is a migemu-only command" in out
    assert "BACKEND qemu" in out and "migemu 0.1.0" not in out
    counts, out = run_pytest(PYTHON, tmp_path, "-s")
    assert counts == {"passed": 5}, out
    assert "BACKEND migemu migemu 0.1.0" in out


def test_bad_marker_is_a_usage_error(tmp_path):
    (tmp_path / "test_bad.py").write_text(
        "import pytest\n\n@pytest.mark.migemu_against('kvm')\n"
        "def test_x(migemu_backend):\n    pass\n"
    )
    counts, out = run_pytest(PYTHON, tmp_path)
    assert "migemu_against('kvm'): backends are migemu, qemu" in out, out
