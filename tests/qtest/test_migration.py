"""End-to-end migrations between real processes (migemu <-> migemu, migemu <-> QEMU 7.2).

Each test starts a source and a destination on unix-socket QMP monitors, migrates a realistic
RAM image over loopback TCP, and checks what a management client sees (status, events, the
query-migrate counters) and what matters most: the destination's RAM file is byte-identical
to the source's. The QEMU cases run the same flows with real qemu-system-x86_64 on one side.
"""

from __future__ import annotations

import pytest
from harness import QEMU, make_image, page_stats, qemu_cmd, setup_pair, sha256

pytestmark = pytest.mark.asyncio

MIB = 32


def src_events_idle(syncs: int) -> list[str]:
    """QEMU's source events for an idle guest (REC): the pass before STOP happens only once
    a 100 ms bandwidth window gave a threshold; a very fast migration completes without."""
    before_stop = ["MIGRATION_PASS:2"] if syncs == 3 else []
    return [
        "MIGRATION:setup", "MIGRATION_PASS:1", "MIGRATION:active", *before_stop,
        "STOP", f"MIGRATION_PASS:{syncs}", "MIGRATION:completed",
    ]  # fmt: skip


DST_EVENTS = ["MIGRATION:setup", "MIGRATION:active", "RESUME", "MIGRATION:completed"]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.ram"
    make_image(path, MIB, seed=5)
    return path


async def migrate(
    cluster, image, *, multifd, method="none", channels=2, src_bin=None, dst_bin=None
):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False, binary=src_bin)
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer", binary=dst_bin)
    uri = await setup_pair(src, dst, multifd=multifd, method=method, channels=channels)
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["completed", "failed"])
    assert info["status"] == "completed", info
    await dst.wait_status(["completed"])
    return src, dst, info


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
async def test_multifd_migration(cluster, image, method, channels):
    src, dst, info = await migrate(cluster, image, multifd=True, method=method, channels=channels)
    assert sha256(dst.ram) == sha256(image)
    zero, nonzero = page_stats(image)
    ram = (await src.wait_status(["completed"]))["ram"]
    assert ram["total"] == MIB << 20
    assert ram["duplicate"] == zero and ram["normal"] == nonzero
    assert ram["normal-bytes"] == nonzero * 4096
    assert ram["remaining"] == 0 and ram["dirty-sync-count"] in (2, 3)
    # 7.2 counts multifd-bytes as headers + uncompressed pages (facts 4.5)
    assert ram["multifd-bytes"] >= nonzero * 4096
    assert (await src.cmd("query-status"))["status"] == "postmigrate"
    assert (await dst.cmd("query-status"))["status"] == "running"
    await src.wait_status(["completed"])
    assert src.event_names() == src_events_idle(ram["dirty-sync-count"])
    assert dst.event_names() == DST_EVENTS


async def test_precopy_without_multifd(cluster, image):
    src, dst, info = await migrate(cluster, image, multifd=False)
    assert sha256(dst.ram) == sha256(image)
    assert info["ram"]["multifd-bytes"] == 0


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize("method", ["none", "zstd", "zlib"])
@pytest.mark.parametrize("direction", ["migemu-to-qemu", "qemu-to-migemu"])
async def test_interop_with_qemu(cluster, image, method, direction):
    src_bin = qemu_cmd() if direction == "qemu-to-migemu" else None
    dst_bin = qemu_cmd() if direction == "migemu-to-qemu" else None
    src, dst, _ = await migrate(
        cluster, image, multifd=True, method=method, src_bin=src_bin, dst_bin=dst_bin
    )
    assert sha256(dst.ram) == sha256(image)


async def test_connect_refused(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    await src.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    info = await src.wait_status(["failed"])
    assert info == {
        "status": "failed",
        "error-desc": f"Failed to connect to '127.0.0.1:{port}': Connection refused",
    }
    assert (await src.cmd("query-status"))["status"] == "running"


async def test_cancel_then_migrate_again(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    uri = await setup_pair(src, dst, multifd=True, method="zstd", bandwidth=1 << 20)
    await src.cmd("migrate", {"uri": uri})
    await src.wait_status(["active"])
    await src.cmd("migrate_cancel")
    info = await src.wait_status(["cancelled"])
    assert info == {"status": "cancelled"}
    assert "MIGRATION:cancelling" in src.event_names()
    assert (await src.cmd("query-status"))["status"] == "running"
    assert await dst.wait_exit() == 1  # the destination of a cancelled migration exits(1)
    dst2 = await cluster.start("dst2", mem_mib=MIB, incoming="defer")
    uri2 = await setup_pair(src, dst2, multifd=True, method="zstd")
    await src.cmd("migrate", {"uri": uri2})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    await dst2.wait_status(["completed"])
    assert sha256(dst2.ram) == sha256(image)


async def test_destination_dies(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    uri = await setup_pair(src, dst, multifd=True, bandwidth=1 << 20)
    await src.cmd("migrate", {"uri": uri})
    await src.wait_status(["active"])
    dst.proc.kill()
    info = await src.wait_status(["failed"])
    assert info["error-desc"].startswith(("Unable to write to socket", "Unable to read from"))
    assert (await src.cmd("query-status"))["status"] == "running"
    dst2 = await cluster.start("dst2", mem_mib=MIB, incoming="defer")
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    uri2 = await setup_pair(src, dst2, multifd=True)
    await src.cmd("migrate", {"uri": uri2})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    await dst2.wait_status(["completed"])
    assert sha256(dst2.ram) == sha256(image)


async def test_compression_mismatch_fails_both_sides(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    uri = await setup_pair(src, dst, multifd=True, method="none")
    await src.cmd("migrate-set-parameters", {"multifd-compression": "zstd"})
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["failed", "completed"])
    assert await dst.wait_exit() == 1
    assert "flags received 4 flags expected 0" in cluster.log("dst")
    assert info["status"] in ("failed", "completed")  # no return path: it may have finished
    assert (await src.cmd("query-status"))["status"] in ("running", "postmigrate")


async def test_channel_count_mismatch(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    uri = await setup_pair(src, dst, multifd=True, channels=2)
    await src.cmd("migrate-set-parameters", {"multifd-channels": 4})
    await src.cmd("migrate", {"uri": uri})
    await src.wait_status(["failed", "completed"])
    assert await dst.wait_exit() == 1
    assert "multifd" in cluster.log("dst")


async def test_multifd_settings_locked_while_running(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    uri = await setup_pair(src, dst, multifd=True, bandwidth=1 << 20)
    await src.cmd("migrate", {"uri": uri})
    await src.wait_status(["active"])
    from qemu.qmp import ExecuteError

    for name, value in (("multifd-channels", 8), ("multifd-compression", "zlib")):
        with pytest.raises(ExecuteError) as err:
            await src.cmd("migrate-set-parameters", {name: value})
        assert str(err.value) == (
            f"Parameter '{name}' cannot be changed while a migration is in progress"
        )
    # QEMU's own checks still come first, and other parameters still change
    with pytest.raises(ExecuteError) as err:
        await src.cmd("migrate-set-parameters", {"multifd-channels": 0})
    assert str(err.value) == "Parameter 'multifd_channels' expects a value between 1 and 255"
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"


async def test_pause_before_switchover(cluster, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    uri = await setup_pair(src, dst, multifd=True, extra_caps=["pause-before-switchover"])
    await src.cmd("migrate", {"uri": uri})
    await src.wait_status(["pre-switchover"])
    assert (await src.cmd("query-status"))["status"] == "finish-migrate"
    from qemu.qmp import ExecuteError

    with pytest.raises(ExecuteError) as err:
        await src.cmd("migrate-continue", {"state": "active"})
    assert str(err.value) == "Migration not in expected state: pre-switchover"
    await src.cmd("migrate-continue", {"state": "pre-switchover"})
    syncs = (await src.wait_status(["completed"]))["ram"]["dirty-sync-count"]
    await dst.wait_status(["completed"])
    names = src.event_names()
    assert names[names.index("STOP") :] == [
        "STOP", "MIGRATION:pre-switchover", "MIGRATION:device", f"MIGRATION_PASS:{syncs}",
        "MIGRATION:completed",
    ]  # fmt: skip
    assert sha256(dst.ram) == sha256(image)


@pytest.mark.parametrize("method", ["none", "zstd"])
async def test_dirtying_guest_final_state(cluster, tmp_path, image, method):
    """The guest writes ~2000 pages/s (8 MB/s) during the migration; after switchover the source's
    frozen RAM and the destination's must be identical (no write lost by dirty tracking)."""
    live = tmp_path / "src-live.ram"
    live.write_bytes(image.read_bytes())
    src = await cluster.start(
        "src", mem_mib=MIB, image=live, share=True,
        extra=["-migemu-guest", "dirty,rate=2000,seed=3"],
    )  # fmt: skip
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    uri = await setup_pair(src, dst, multifd=True, method=method, bandwidth=64 << 20)
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["completed", "failed"])
    assert info["status"] == "completed", info
    await dst.wait_status(["completed"])
    assert info["ram"]["dirty-sync-count"] >= 3
    assert sha256(live) != sha256(image)  # the guest really wrote
    assert sha256(dst.ram) == sha256(live)


async def test_sweep_guest_resumes_on_destination(cluster, tmp_path):
    """QEMU migration-test's guest: the destination's memory is a consistent snapshot and
    its vCPU continues from where the source's stopped."""
    from migemu.emulator.guest.workload import check_sweep

    src = await cluster.start(
        "src", mem_mib=128, share=True, extra=["-migemu-guest", "sweep,rate=100000"]
    )
    dst = await cluster.start(
        "dst", mem_mib=128, incoming="defer", extra=["-migemu-guest", "sweep,rate=100000"]
    )
    uri = await setup_pair(src, dst, multifd=True, bandwidth=256 << 20)
    await src.cmd("migrate", {"uri": uri})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    await dst.wait_status(["completed"])
    await dst.cmd("stop")
    import mmap

    with open(dst.ram, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mem:
        assert check_sweep(memoryview(mem)) is None


async def test_exec_save_and_restore(cluster, tmp_path, image):
    """``migrate exec:CMD`` writes the stream to a command (here: a file); a destination
    started with ``-incoming exec:CMD`` loads it back: the classic save/restore to file."""
    dump = tmp_path / "stream.bin"
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    await src.cmd("migrate", {"uri": f"exec:cat > {dump}"})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    assert dump.read_bytes()[:4] == b"QEVM"
    dst = await cluster.start("dst", mem_mib=MIB, incoming=f"exec:cat {dump}")
    assert (await dst.wait_status(["completed", "failed"]))["status"] == "completed"
    assert sha256(dst.ram) == sha256(image)
    assert "socket-address" not in await dst.cmd("query-migrate")
