"""The command line libqtest builds, and ``-accel qtest`` as Debian's QEMU 7.2 treats it.

Debian's QEMU has no qtest accelerator: ``-accel qtest`` alone fails ("invalid accelerator
qtest"), even together with ``-qtest``. libqtest appends ``-accel qtest`` after the test's
own ``-accel kvm -accel tcg``, and QEMU stops at the first accelerator that works (tcg), so
the qtest one is never tried and the line is accepted. migemu's parser does the same.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from migemu.emulator.cmdline import CmdlineError, parse_command_line

PROG = "qemu-system-x86_64"
QEMU = shutil.which("qemu-system-x86_64")
LIBQTEST = [
    "-qtest", "unix:/tmp/qtest-1.sock", "-qtest-log", "/dev/null",
    "-chardev", "socket,path=/tmp/qtest-1.qmp,id=char0", "-mon", "chardev=char0,mode=control",
    "-display", "none", "-accel", "kvm", "-accel", "tcg", "-name", "source,debug-threads=on",
    "-m", "150M", "-serial", "file:/tmp/src_serial", "-drive", "file=/tmp/bootsect,format=raw",
    "-accel", "qtest",
]  # fmt: skip


def test_libqtest_command_line():
    config = parse_command_line([PROG, *LIBQTEST])
    assert config.qtest == "unix:/tmp/qtest-1.sock"
    assert config.qtest_log == "/dev/null"
    assert config.accelerator == "kvm"  # the first valid one; kvm then falls back to tcg
    assert dict(config.drives[0]) == {"file": "/tmp/bootsect", "format": "raw"}
    assert [s.spec for s in config.serials] == ["file:/tmp/src_serial"]


def test_accel_qtest_alone_is_invalid():
    with pytest.raises(CmdlineError) as info:
        parse_command_line([PROG, "-qtest", "unix:/tmp/x", "-accel", "qtest"])
    assert info.value.message == f"{PROG}: -accel qtest: invalid accelerator qtest"


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_accel_qtest_alone_matches_qemu():
    proc = subprocess.run(
        [PROG, "-machine", "none", "-display", "none", "-qtest", "unix:/nonexistent/x",
         "-accel", "qtest"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"{PROG}: -accel qtest: invalid accelerator qtest"
