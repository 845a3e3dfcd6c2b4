"""migemu.testing's API end to end: VMs and pairs start, migrate and clean up; bad use is a
clear error; the same pair test runs on real QEMU 7.2 (``migemu_against``) and must see what
migemu shows (status sequence, events, RAM)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from migemu.testing import (
    FaultSpecError,
    MigrationFailedError,
    MigrationPair,
    MigrationStatusError,
    MigrationTimeoutError,
    UnsupportedByQEMU,
    VMExitedError,
    VMStartError,
    VMStateError,
    start_vm,
)
from migemu.testing.sync import SyncPair
from migemu.testing.vm import VM, memory_mib

# query-migrate of a completed migration, as QEMU 7.2 answers it (checked on both backends)
COMPLETED_KEYS = ["status", "setup-time", "downtime", "total-time", "ram"]


def test_memory_sizes():
    assert memory_mib("256M") == 256 and memory_mib("1G") == 1024 and memory_mib("64") == 64
    assert memory_mib(32 << 20) == 32
    for bad in ("12X", "", "1.5G", 1000, "0M"):
        with pytest.raises(ValueError, match="memory="):
            memory_mib(bad)


def test_bad_options_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="unknown migemu profile '8.0'.*QEMU 7.2"):
        VM(profile="8.0")
    with pytest.raises(ValueError, match="unknown workload 'busy'"):
        VM(guest="busy")
    with pytest.raises(FaultSpecError, match="no-such-fault"):
        VM(faults=["no-such-fault"])
    with pytest.raises(ValueError, match="transport='udp'"):
        MigrationPair(transport="udp")
    with pytest.raises(ValueError, match="method='lz4'"):
        MigrationPair(method="lz4")
    with pytest.raises(UnsupportedByQEMU, match="guest='dirty'"):
        VM(guest="dirty", backend="qemu")
    with pytest.raises(UnsupportedByQEMU, match="fault injection"):
        VM(faults=["close-main"], backend="qemu")


async def test_vm_life_cycle_and_cleanup():
    vm = VM("one", memory="32M")
    with pytest.raises(VMStateError, match="not started"):
        await vm.cmd("query-status")
    await vm.start()
    workdir, pid = vm.workdir, vm.pid
    assert (await vm.qmp.execute("query-status"))["status"] == "running"
    assert vm.ram.stat().st_size == 32 << 20 and vm.sock.exists()
    with pytest.raises(VMStateError, match=rf"one: already started \(pid {pid}\)"):
        await vm.start()
    await vm.close()
    await vm.close()  # idempotent
    assert not workdir.exists()
    assert not Path(f"/proc/{pid}").exists() or _zombie_or_gone(pid)
    with pytest.raises(VMStateError, match="closed"):
        await vm.start()
    with pytest.raises(VMStateError, match="closed"):
        await vm.cmd("query-status")


def _zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] in ("Z", "X")
    except OSError:
        return True


async def test_a_bad_argument_is_a_start_error_with_the_output():
    with pytest.raises(VMStartError, match=r"vm: .*exited with status 1.*-no-such-option"):
        await start_vm(args=["-no-such-option"])


async def test_waiting_on_an_exited_vm_says_so(migemu_vm):
    vm = await migemu_vm(memory="32M")
    await vm.qmp.execute("quit")
    assert await vm.wait_exit(30) == 0
    with pytest.raises(VMExitedError, match=r"vm0 \(pid \d+\) exited with status 0 while waiting"):
        await vm.wait_status("completed", 5)
    with pytest.raises(VMExitedError, match="exited with status 0"):
        await vm.cmd("query-status")
    with pytest.raises(VMExitedError, match="while waiting for an event"):
        await vm.wait_event("RESUME", 5, since_start=False)


async def test_unknown_fault_spec_is_refused_before_sending(migemu_pair):
    with pytest.raises(FaultSpecError, match="unknown fault 'explode'"):
        await migemu_pair.inject_fault("explode,after=3")
    assert await migemu_pair.source.qmp.execute("x-migemu-query-faults") == []


async def test_timeout_says_where_the_migration_was(migemu_pair):
    await migemu_pair.migrate({"events": True}, {"max-bandwidth": 1 << 20})
    with pytest.raises(MigrationTimeoutError) as err:
        await migemu_pair.wait_for_status("completed", timeout=0.5)
    text = str(err.value)
    assert "source: migration status not completed after 0.5 s (status 'active'" in text, text
    assert "remaining" in text and err.value.info["status"] == "active"
    await migemu_pair.cancel()
    await migemu_pair.wait_for_status("cancelled")


async def test_a_final_status_not_asked_for_raises(migemu_pair):
    await migemu_pair.migrate()
    await migemu_pair.wait_for_status("completed")
    with pytest.raises(MigrationStatusError, match="migration completed while waiting for active"):
        await migemu_pair.wait_for_status("active", timeout=5)


async def test_failed_raises_with_error_desc_unless_asked_for(migemu_pair):
    await migemu_pair.inject_fault("close-main")
    await migemu_pair.migrate()
    with pytest.raises(MigrationFailedError, match="migration failed while waiting for") as err:
        await migemu_pair.wait_for_status("completed")
    assert err.value.error_desc and err.value.error_desc in str(err.value)
    info = await migemu_pair.wait_for_status("failed")
    assert info["error-desc"] == err.value.error_desc


@pytest.mark.parametrize("migemu_transport", ["unix", "tcp"])
@pytest.mark.parametrize("migemu_method", [None, "zstd"])
async def test_pair_migrates(migemu_pair, migemu_transport, migemu_method):
    uri = await migemu_pair.migrate({"events": True})
    assert uri.startswith(f"{migemu_transport}:")
    info = await migemu_pair.wait_for_status("completed", timeout=30)
    assert info["ram"]["remaining"] == 0
    assert (info["ram"]["multifd-bytes"] > 0) == (migemu_method is not None)
    assert migemu_pair.ram_equal()
    await migemu_pair.destination.wait_event("RESUME")


async def test_ram_equal_detects_a_difference(migemu_pair):
    await migemu_pair.migrate()
    await migemu_pair.wait_for_status("completed")
    assert migemu_pair.ram_equal()
    with open(migemu_pair.destination.ram, "r+b") as f:
        f.seek(4096 * 7)
        old = f.read(1)
        f.seek(4096 * 7)
        f.write(bytes([old[0] ^ 1]))
    assert not migemu_pair.ram_equal()


async def test_events_iterator(migemu_pair):
    stream = migemu_pair.source.iter_events("MIGRATION", timeout=30)
    await migemu_pair.migrate({"events": True})
    seen = []
    async for ev in stream:
        seen.append(ev["data"]["status"])
        if ev["data"]["status"] == "completed":
            break
    assert seen == ["setup", "active", "completed"]
    with pytest.raises(MigrationTimeoutError, match="source: no MIGRATION for 0.2 s"):
        await anext(migemu_pair.source.iter_events("MIGRATION", timeout=0.2))


@pytest.mark.migemu_pair(guest="dirty,rate=20000", memory="64M")
async def test_non_converge_then_converge(migemu_pair):
    await migemu_pair.ensure_non_converge()
    await migemu_pair.migrate({"events": True})
    await migemu_pair.source.wait_event("MIGRATION_PASS", 30)
    params = await migemu_pair.source.qmp.execute("query-migrate-parameters")
    assert (params["max-bandwidth"], params["downtime-limit"]) == (30_000_000, 1)
    async for ev in migemu_pair.source.iter_events("MIGRATION_PASS", since_start=True):
        if ev["data"]["pass"] >= 3:
            break
    assert (await migemu_pair.query_migrate())["status"] == "active"
    await migemu_pair.ensure_converge()
    await migemu_pair.wait_for_status("completed", timeout=60)
    assert migemu_pair.ram_equal()  # the dirty guest runs on the source only


async def test_restart_destination_after_dst_exit(migemu_pair):
    first = migemu_pair.destination
    await migemu_pair.inject_fault("dst-exit,after=0")
    await migemu_pair.migrate({"multifd": True})
    await migemu_pair.wait_for_status("failed")
    assert await first.wait_exit() == 1
    second = await migemu_pair.restart_destination()
    assert second is migemu_pair.destination and second.name == "destination1"
    await migemu_pair.migrate({"multifd": True})
    await migemu_pair.wait_for_status("completed")
    assert migemu_pair.ram_equal()


def test_sync_pair(tmp_path):
    with SyncPair(memory="32M", method="zlib", workdir=tmp_path / "w") as pair:
        pair.migrate({"events": True}, {"multifd-channels": 3})
        assert pair.wait_for_status("completed", timeout=30)["ram"]["remaining"] == 0
        assert pair.ram_equal()
        assert pair.source.cmd("query-status")["status"] == "postmigrate"
        assert "MIGRATION" in {e["event"] for e in pair.source.events}
        pids = [pair.source.pid, pair.destination.pid]
    assert all(_zombie_or_gone(pid) for pid in pids)
    assert not (tmp_path / "w" / "source.sock").exists()


async def test_pair_cleans_up_on_failure_inside_the_block():
    with pytest.raises(ZeroDivisionError):
        async with MigrationPair(memory="32M") as pair:
            workdir, pids = pair.workdir, [pair.source.pid, pair.destination.pid]
            await pair.migrate()
            raise ZeroDivisionError
    assert not workdir.exists()
    assert all(_zombie_or_gone(pid) for pid in pids)


async def test_x_migemu_command_on_qemu_is_unsupported(migemu_vm):
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("QEMU not installed")
    vm = await migemu_vm(memory="32M", backend="qemu")
    assert (await vm.qmp.execute("query-status"))["status"] == "running"
    with pytest.raises(UnsupportedByQEMU, match="x-migemu-query-faults is a migemu-only command"):
        await vm.qmp.execute("x-migemu-query-faults")


@pytest.mark.migemu_against("migemu", "qemu")
@pytest.mark.parametrize("migemu_method", [None, "zlib"])
async def test_same_migration_on_both_backends(migemu_pair, migemu_backend, migemu_method):
    """Differential: the same pair test on migemu and on real QEMU 7.2 sees the same
    statuses, source events (up to the number of passes) and destination RAM."""
    await migemu_pair.migrate({"events": True}, {"multifd-channels": 2})
    info = await migemu_pair.wait_for_status("completed", timeout=60)
    assert sorted(info) == sorted(COMPLETED_KEYS), info
    assert info["ram"]["total"] == 64 << 20 and info["ram"]["remaining"] == 0
    assert migemu_pair.ram_equal()
    await migemu_pair.destination.wait_event("RESUME", 30)
    names = [n for n in migemu_pair.source.event_names() if not n.startswith("MIGRATION_PASS")]
    assert names == ["MIGRATION:setup", "MIGRATION:active", "STOP", "MIGRATION:completed"]
    status = await migemu_pair.destination.qmp.execute("query-status")
    assert status == {"status": "running", "singlestep": False, "running": True}


async def test_a_socket_path_too_long_is_a_clear_error(tmp_path):
    vm = VM("x", memory="32M", workdir=tmp_path / ("d" * 100))
    with pytest.raises(VMStartError, match="longer than a unix socket allows"):
        await vm.start()
    assert vm.proc is None
    with pytest.raises(VMStateError, match="closed"):
        await vm.start()


async def test_a_command_without_reply_times_out(migemu_vm):
    import signal

    vm = await migemu_vm(memory="32M")
    os.kill(vm.pid, signal.SIGSTOP)
    try:
        with pytest.raises(
            MigrationTimeoutError, match="vm0: no reply to query-status after 0.3 s"
        ):
            await vm.cmd("query-status", timeout=0.3)
    finally:
        os.kill(vm.pid, signal.SIGCONT)


async def test_a_vm_killed_during_a_command_is_reported(migemu_vm):
    vm = await migemu_vm(memory="32M")
    vm.proc.kill()
    with pytest.raises(VMExitedError, match="exited with status -9"):
        await vm.cmd("query-status")


async def test_events_log_is_async_iterable_and_qmp_events_stay_the_users(migemu_pair):
    from_qmp = []

    async def read_qmp_events():
        async for ev in migemu_pair.source.qmp.events:  # plain qemu.qmp use
            from_qmp.append(ev["event"])
            if ev["event"] == "MIGRATION" and ev["data"]["status"] == "completed":
                return

    reader = asyncio.create_task(read_qmp_events())
    caps = [{"capability": "events", "state": True}]  # QMP's own list form is accepted too
    await migemu_pair.migrate(caps)
    await migemu_pair.wait_for_status("completed")
    await asyncio.wait_for(reader, 30)
    async for ev in migemu_pair.source.events:  # the log: from the first event on
        if ev["event"] == "MIGRATION" and ev["data"]["status"] == "completed":
            break
    assert [e["event"] for e in migemu_pair.source.events] == from_qmp
    assert migemu_pair.src is migemu_pair.source and migemu_pair.dst is migemu_pair.destination


async def test_workload_and_extra_args_aliases(migemu_vm):
    vm = await migemu_vm(memory="32M", workload="dirty,rate=100", extra_args=["-name", "alias"])
    assert vm.guest == "dirty,rate=100"
    assert (await vm.cmd("query-name")) == {"name": "alias"}
    with pytest.raises(ValueError, match="not both"):
        VM(guest="idle", workload="idle")
