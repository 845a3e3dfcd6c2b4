"""Postcopy end to end, migemu and real QEMU 7.2 side by side (differential).

The same flows run for migemu->migemu, migemu->QEMU, QEMU->migemu and QEMU->QEMU: a 32 MiB
realistic image, precopy throttled so ``migrate-start-postcopy`` finds it running, then
postcopy to the end. What a client observes must be the same for every pair (events of both
sides, final states and runstates), and the destination's RAM must equal the image. The
QEMU->QEMU run of each flow is the reference, checked in CI where QEMU is installed. A real
QEMU destination needs its RAM on shmem for userfaultfd, so destinations keep RAM in
/dev/shm (removed after each test). Recovery, cancel in postcopy, a killed destination, a
dropped main channel (fault injection) and the error texts of bad postcopy commands follow.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from harness import DEADLINE_S, QEMU, make_image, qemu_cmd, setup_pair, sha256

pytestmark = pytest.mark.asyncio

MIB = 32
PRECOPY_BANDWIDTH = 4 << 20
SRC_EVENTS = [
    "MIGRATION:setup", "MIGRATION_PASS:1", "MIGRATION:active", "MIGRATION:postcopy-active",
    "STOP", "MIGRATION_PASS:2", "MIGRATION:completed",
]  # fmt: skip
DST_EVENTS = [
    "MIGRATION:setup", "MIGRATION:active", "MIGRATION:postcopy-active", "RESUME",
    "MIGRATION:completed",
]  # fmt: skip
# migrate-pause in postcopy, migrate-recover, migrate resume:true
SRC_RECOVERY_EVENTS = [
    *SRC_EVENTS[:-1], "MIGRATION:postcopy-paused", "MIGRATION:postcopy-recover",
    "MIGRATION:postcopy-active", "MIGRATION:completed",
]  # fmt: skip
DST_RECOVERY_EVENTS = [
    *DST_EVENTS[:-1], "MIGRATION:postcopy-paused", "MIGRATION:setup",
    "MIGRATION:postcopy-recover", "MIGRATION:postcopy-active", "MIGRATION:completed",
]  # fmt: skip

needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
PAIRS = [
    pytest.param("migemu", "migemu", id="migemu-to-migemu"),
    pytest.param("migemu", "qemu", id="migemu-to-qemu", marks=needs_qemu),
    pytest.param("qemu", "migemu", id="qemu-to-migemu", marks=needs_qemu),
    pytest.param("qemu", "qemu", id="qemu-to-qemu-reference", marks=needs_qemu),
]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.ram"
    make_image(path, MIB, seed=5)
    return path


@pytest.fixture
def shm():
    path = Path(tempfile.mkdtemp(prefix="migemu-postcopy-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def binary(kind: str) -> list[str] | None:
    return qemu_cmd() if kind == "qemu" else None


async def start_pair(cluster, image, shm, src_kind, dst_kind, *, preempt=False):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False, binary=binary(src_kind))
    dst = await cluster.start(
        "dst", mem_mib=MIB, image=shm / "dst.ram", incoming="defer", binary=binary(dst_kind)
    )
    caps = ["postcopy-ram", *(["postcopy-preempt"] if preempt else [])]
    uri = await setup_pair(src, dst, multifd=False, bandwidth=PRECOPY_BANDWIDTH, extra_caps=caps)
    return src, dst, uri


async def migrate_into_postcopy(src, uri):
    """Precopy until some RAM went, then migrate-start-postcopy; returns once the source
    is in postcopy (or already done)."""
    await src.cmd("migrate", {"uri": uri})
    deadline = time.monotonic() + DEADLINE_S
    while True:  # poll until 1 MiB of precopy went
        info = await src.wait_status(["active"])
        if info["ram"]["transferred"] >= 1 << 20:
            break
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.01)
    await src.cmd("migrate-start-postcopy")
    await src.wait_status(["postcopy-active", "completed"])


async def dst_running(dst):
    """Poll until the destination ran POSTCOPY_RUN (its guest runs)."""
    deadline = time.monotonic() + DEADLINE_S
    while (await dst.cmd("query-status"))["status"] != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def finish(src, dst, image):
    info = await src.wait_status(["completed", "failed"])
    assert info["status"] == "completed", info
    await dst.wait_status(["completed"])
    assert sha256(dst.ram) == sha256(image)
    assert (await src.cmd("query-status"))["status"] == "postmigrate"
    assert (await dst.cmd("query-status"))["status"] == "running"
    return info


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS)
async def test_postcopy_completes_with_identical_ram(cluster, image, shm, src_kind, dst_kind):
    src, dst, uri = await start_pair(cluster, image, shm, src_kind, dst_kind)
    await migrate_into_postcopy(src, uri)
    info = await finish(src, dst, image)
    ram = info["ram"]
    assert ram["precopy-bytes"] > 0 and ram["postcopy-bytes"] > 0
    assert ram["downtime-bytes"] == 0  # RAM sent while stopped is postcopy-bytes
    assert "downtime" in info
    assert src.event_names() == SRC_EVENTS
    assert dst.event_names() == DST_EVENTS


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS)
async def test_postcopy_preempt_completes(cluster, image, shm, src_kind, dst_kind):
    src, dst, uri = await start_pair(cluster, image, shm, src_kind, dst_kind, preempt=True)
    await migrate_into_postcopy(src, uri)
    await finish(src, dst, image)
    assert src.event_names() == SRC_EVENTS
    assert dst.event_names() == DST_EVENTS


RECOVERY_PAIRS = PAIRS


@pytest.mark.parametrize("preempt", [False, True], ids=["plain", "preempt"])
@pytest.mark.parametrize(("src_kind", "dst_kind"), RECOVERY_PAIRS)
async def test_recovered_postcopy(cluster, image, shm, tmp_path, src_kind, dst_kind, preempt):
    """migration-test's recovery flow: postcopy crawling at 4 KB/s, migrate-pause on the
    source, both sides paused, migrate-recover on a new socket, migrate resume:true."""
    src, dst, uri = await start_pair(cluster, image, shm, src_kind, dst_kind, preempt=preempt)
    await src.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": 4096})
    await migrate_into_postcopy(src, uri)
    await src.wait_status(["postcopy-active"])
    await dst_running(dst)  # 7.2 pauses only once the guest runs there (else it fails)
    await src.cmd("migrate-pause")
    await dst.wait_status(["postcopy-paused"])
    await src.wait_status(["postcopy-paused"])
    recover_uri = f"unix:{tmp_path}/recover.sock"
    await dst.cmd("migrate-recover", {"uri": recover_uri})
    await src.cmd("migrate", {"uri": recover_uri, "resume": True})
    await src.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
    await finish(src, dst, image)
    assert src.event_names() == SRC_RECOVERY_EVENTS
    assert dst.event_names() == DST_RECOVERY_EVENTS


@pytest.mark.parametrize(
    ("src_kind", "dst_kind"),
    [PAIRS[0], pytest.param("qemu", "qemu", id="qemu-reference", marks=needs_qemu)],
)
async def test_cancel_in_postcopy(cluster, image, shm, src_kind, dst_kind):
    """7.2's migrate_cancel works in postcopy: the source ends cancelled and stays stopped
    (postmigrate); the destination, which runs the guest, pauses."""
    src, dst, uri = await start_pair(cluster, image, shm, src_kind, dst_kind)
    await src.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": 4096})
    await migrate_into_postcopy(src, uri)
    await dst_running(dst)
    await src.cmd("migrate_cancel")
    await src.wait_status(["cancelled"])
    await dst.wait_status(["postcopy-paused"])
    assert (await src.cmd("query-status"))["status"] == "postmigrate"
    assert (await dst.cmd("query-status"))["status"] == "running"
    assert src.event_names() == [*SRC_EVENTS[:-1], "MIGRATION:cancelling", "MIGRATION:cancelled"]
    assert dst.event_names() == [*DST_EVENTS[:-1], "MIGRATION:postcopy-paused"]
    with pytest.raises(Exception, match="Cannot resume if there is no paused migration"):
        await src.cmd("migrate", {"uri": uri, "resume": True})


@pytest.mark.parametrize(
    ("src_kind", "dst_kind"),
    [PAIRS[0], pytest.param("qemu", "qemu", id="qemu-reference", marks=needs_qemu)],
)
async def test_destination_killed_in_postcopy(cluster, image, shm, src_kind, dst_kind):
    """The destination dies in postcopy: the source pauses and keeps its RAM (it could
    resume to a destination that still had the guest); cancel then ends it."""
    src, dst, uri = await start_pair(cluster, image, shm, src_kind, dst_kind)
    await src.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": 4096})
    await migrate_into_postcopy(src, uri)
    await dst_running(dst)
    os.kill(dst.proc.pid, signal.SIGKILL)
    await dst.wait_exit()
    await src.wait_status(["postcopy-paused"])
    assert (await src.cmd("query-status"))["status"] == "finish-migrate"
    assert src.event_names() == [*SRC_EVENTS[:-1], "MIGRATION:postcopy-paused"]
    await src.cmd("migrate_cancel")
    if src_kind == "qemu":
        # 7.2 swaps paused -> cancelling and its paused migration thread never finishes
        # the cancel (it stays cancelling for good); migemu ends it: cancelled.
        assert (await src.cmd("query-migrate"))["status"] == "cancelling"
        return
    await src.wait_status(["cancelled"])
    assert src.event_names() == [
        *SRC_EVENTS[:-1],
        "MIGRATION:postcopy-paused",
        "MIGRATION:cancelling",
        "MIGRATION:cancelled",
    ]
    assert (await src.cmd("query-status"))["status"] == "postmigrate"


async def test_dropped_main_channel_pauses_then_recovers(cluster, image, shm, tmp_path):
    """Fault injection: the main channel drops in postcopy (close-main at=postcopy); both
    sides pause, and a recovery finishes the migration with the right RAM."""
    src, dst, uri = await start_pair(cluster, image, shm, "migemu", "migemu")
    await src.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": 4096})
    await src.cmd("x-migemu-inject-fault", {"spec": "close-main,at=postcopy,after=2"})
    await migrate_into_postcopy(src, uri)
    await src.wait_status(["postcopy-paused"])
    await dst.wait_status(["postcopy-paused"])
    recover_uri = f"unix:{tmp_path}/recover.sock"
    await dst.cmd("migrate-recover", {"uri": recover_uri})
    await src.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
    await src.cmd("migrate", {"uri": recover_uri, "resume": True})
    await finish(src, dst, image)
    assert src.event_names() == SRC_RECOVERY_EVENTS


BAD_COMMANDS = [
    ("src", "migrate-start-postcopy", None),
    ("src", "migrate-pause", None),
    ("dst", "migrate-pause", None),
    ("src", "migrate-recover", {"uri": "unix:/nonexistent/recover.sock"}),
    ("dst", "migrate-recover", {"uri": "unix:/nonexistent/recover.sock"}),
    ("src", "migrate", {"uri": "tcp:127.0.0.1:1", "resume": True}),
    ("src", "human-monitor-command", {"command-line": "migrate_start_postcopy"}),
    ("src", "human-monitor-command", {"command-line": "migrate_pause"}),
    ("dst", "human-monitor-command", {"command-line": "migrate_recover unix:/nonexistent/r"}),
    ("src", "human-monitor-command", {"command-line": "migrate -r tcp:127.0.0.1:1"}),
    ("caps", None, None),  # postcopy-ram on from here
    ("src", "migrate-start-postcopy", None),
    ("dst", "migrate-start-postcopy", None),
    ("src", "human-monitor-command", {"command-line": "migrate_start_postcopy"}),
    ("src", "migrate-set-capabilities", {"capabilities": [
        {"capability": "postcopy-ram", "state": False},
        {"capability": "postcopy-preempt", "state": True},
    ]}),
]  # fmt: skip


async def replies(cluster, kind, tmp_path):
    src = await cluster.start(f"src-{kind}", mem_mib=MIB, binary=binary(kind))
    dst = await cluster.start(f"dst-{kind}", mem_mib=MIB, incoming="defer", binary=binary(kind))
    vms = {"src": src, "dst": dst}
    out = []
    for who, name, args in BAD_COMMANDS:
        if who == "caps":
            for vm in (src, dst):
                await vm.cmd(
                    "migrate-set-capabilities",
                    {"capabilities": [{"capability": "postcopy-ram", "state": True}]},
                )
            continue
        try:
            out.append((who, name, "ok", await vms[who].cmd(name, args)))
        except Exception as err:  # qemu.qmp's ExecuteError: class and desc
            out.append((who, name, type(err).__name__, str(err)))
    return out


@needs_qemu
async def test_bad_postcopy_commands_answer_as_qemu(cluster, tmp_path):
    assert await replies(cluster, "migemu", tmp_path) == await replies(cluster, "qemu", tmp_path)
