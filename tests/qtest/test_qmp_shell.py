"""qemu.qmp's qmp-shell works against migemu unchanged, and prints what it prints for QEMU.

The same qmp-shell session (queries, a parameter set, a range error, a type error) runs
against real QEMU 7.2 and against migemu; the transcripts must be identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import QEMU, migemu_cmd, qemu_cmd


def find_qmp_shell() -> str | None:
    """qemu.qmp's qmp-shell: beside this Python first (a venv's bin is not on PATH when
    tests run as ``.venv/bin/python -m pytest``), then on PATH."""
    beside = Path(sys.executable).parent / "qmp-shell"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("qmp-shell")


QMP_SHELL = find_qmp_shell()
SCRIPT = "\n".join(
    [
        "query-status",
        "query-name",
        "migrate-set-parameters multifd-channels=4 multifd-compression=zstd",
        "query-migrate-parameters",
        "migrate-set-parameters multifd-channels=0",
        "migrate-set-parameters max-bandwidth=foo",
        'migrate-set-capabilities capabilities=[{"capability":"multifd","state":true}]',
        "query-migrate-capabilities",
        "no-such-command",
        "query-migrate",
        "",
    ]
)


def shell_session(binary: list[str], tmp: Path) -> str:
    sock = tmp / "shell.sock"
    proc = subprocess.Popen(
        [*binary, "-machine", "none", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.01)
        for _ in range(100):  # the socket file exists a moment before listen()
            out = subprocess.run(
                [QMP_SHELL, str(sock)], input=SCRIPT, capture_output=True, text=True, timeout=60
            )
            if "Connection refused" not in out.stderr + out.stdout:
                return out.stdout
            time.sleep(0.02)
        raise AssertionError("qmp-shell could not connect")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(QMP_SHELL is None, reason="qmp-shell (qemu.qmp) not installed")
def test_qmp_shell_against_migemu(tmp_path):
    out = shell_session(migemu_cmd(), tmp_path)
    assert "Connected to QEMU 7.2.22" in out
    assert '"multifd-channels": 4' in out and '"multifd-compression": "zstd"' in out
    assert "Parameter 'multifd_channels' expects a value between 1 and 255" in out


@pytest.mark.skipif(QMP_SHELL is None or QEMU is None, reason="needs qmp-shell and QEMU")
def test_qmp_shell_sees_the_same_as_with_qemu(tmp_path):
    assert shell_session(migemu_cmd(), tmp_path) == shell_session(qemu_cmd(), tmp_path)
