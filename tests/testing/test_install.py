"""A user's view: a fresh virtual environment with a non-editable ``pip install`` of this
checkout runs a user's test file that uses only the documented fixtures and API, from a
directory outside the checkout. What this proves: the package, its data (the QAPI schema
files) and the ``pytest11`` entry point work from site-packages. To stay fast the new venv
sees this venv's site-packages for the dependencies (a ``.pth`` line, which does not
activate this venv's editable migemu); migemu itself comes only from the new install."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

from testing_support import REPO, run_pytest

USER_TESTS = """
import pytest

from migemu.testing import MigrationFailedError, MigrationPair, VMStateError


@pytest.mark.asyncio
async def test_migrate_and_compare(migemu_pair: MigrationPair):
    await migemu_pair.migrate(capabilities={"events": True}, parameters={"max-bandwidth": 1 << 30})
    info = await migemu_pair.wait_for_status("completed", timeout=60)
    assert info["ram"]["remaining"] == 0
    assert migemu_pair.ram_equal()
    assert migemu_pair.source.qmp.__class__.__mro__[1].__name__ == "QMPClient"
    names = [e["event"] for e in migemu_pair.source.events]
    assert "MIGRATION" in names and "STOP" in names


@pytest.mark.asyncio
@pytest.mark.parametrize("migemu_method", ["zstd"])
async def test_destination_failure(migemu_pair: MigrationPair, migemu_method):
    await migemu_pair.inject_fault("dst-exit,after=2")
    await migemu_pair.migrate({"multifd": True})
    with pytest.raises(MigrationFailedError):
        await migemu_pair.wait_for_status("completed", timeout=60)


@pytest.mark.asyncio
async def test_factory_and_bad_use(migemu_vm):
    vm = await migemu_vm(memory="64M")
    assert (await vm.qmp.execute("query-status"))["status"] == "running"
    with pytest.raises(VMStateError, match="already started"):
        await vm.start()
"""


def test_non_editable_install_runs_a_users_tests(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(REPO / "migemu", src / "migemu", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    shutil.rmtree(src)  # nothing may come from the copy: only from site-packages
    where = subprocess.run(
        [python, "-c", "import migemu.testing.plugin as p, migemu.qapi as q; print(p.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert where.startswith(purelib), where
    user = tmp_path / "user"
    user.mkdir()
    (user / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    counts, out = run_pytest(python, user)
    assert counts == {"passed": 3}, out
