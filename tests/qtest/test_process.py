"""The migemu process as a management stack sees it: start-up, daemonize, pidfile, signals,
exit statuses, command-line errors, sparse guest RAM. Where QEMU's behaviour is the
reference, the same line runs against real QEMU too (when installed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

import pytest
from harness import QEMU, connect_when_ready, migemu_cmd


async def test_sigterm_exits_zero_with_shutdown_event(cluster):
    vm = await cluster.start("vm", mem_mib=16)
    vm.proc.send_signal(signal.SIGTERM)
    assert await vm.wait_exit() == 0
    names = [e["event"] for e in vm.events]
    assert names == ["SHUTDOWN"]
    assert vm.events[0]["data"] == {"guest": False, "reason": "host-signal"}


@pytest.mark.parametrize("binary", ["migemu", "qemu"])
def test_unknown_option_fails_like_qemu(binary):
    if binary == "qemu" and QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    cmd = [QEMU] if binary == "qemu" else [*migemu_cmd()]
    proc = subprocess.run([*cmd, "-foo"], capture_output=True, text=True, timeout=30)
    prog = "qemu-system-x86_64" if binary == "qemu" else "migemu"
    assert proc.returncode == 1
    assert proc.stderr == f"{prog}: -foo: invalid option\n"


def test_version_names_migemu():
    proc = subprocess.run([*migemu_cmd(), "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    first = proc.stdout.splitlines()[0]
    assert first.startswith("QEMU emulator version 7.2.") and "migemu" in first


async def test_daemonize_and_pidfile(tmp_path):
    sock = tmp_path / "d.sock"
    pidfile = tmp_path / "d.pid"
    proc = subprocess.run(
        [*migemu_cmd(), "-machine", "none", "-daemonize", "-pidfile", str(pidfile),
         "-qmp", f"unix:{sock},server=on,wait=off"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    # QEMU's parent exits 0 only once the child's monitors exist
    assert proc.returncode == 0
    assert sock.exists() and oct(sock.stat().st_mode & 0o777) == "0o600"
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, 0)
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(500):  # the daemon is not our child: poll until it is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("daemon did not exit on SIGTERM")
    assert not pidfile.exists()


async def test_64g_guest_on_a_small_machine(cluster, tmp_path):
    """Sparse RAM: a 64 GiB guest starts and answers; its RSS stays small."""
    sock = tmp_path / "big.sock"
    proc = subprocess.Popen(
        [*migemu_cmd(), "-machine", "none", "-m", "64G", "-qmp", f"unix:{sock},server=on,wait=off"]
    )
    try:
        from qemu.qmp import QMPClient

        client = QMPClient("big")
        await connect_when_ready(client, sock, proc)
        assert (await client.execute("query-status"))["status"] == "running"
        rss_kib = int(
            next(ln for ln in open(f"/proc/{proc.pid}/status") if ln.startswith("VmRSS")).split()[1]
        )
        assert rss_kib < 512 * 1024  # untouched memory costs nothing
        # The reply races with the socket closing; qemu.qmp reports that EOF on disconnect.
        with contextlib.suppress(Exception):
            await client.execute("quit")
        with contextlib.suppress(EOFError):
            await client.disconnect()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_backend_file_is_a_clear_error(tmp_path):
    small = tmp_path / "small.ram"
    small.write_bytes(b"x" * 4096)
    proc = subprocess.run(
        [*migemu_cmd(), "-machine", "none", "-m", "16M", "-object",
         f"memory-backend-file,id=mem0,size=16M,mem-path={small},share=on",
         "-machine", "memory-backend=mem0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    assert (
        proc.stderr == "migemu: backing store size 0x1000 does not match 'size' option 0x1000000\n"
    )
