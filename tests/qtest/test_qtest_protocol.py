"""migemu driven the way QEMU's migration-test drives QEMU: over qtest and QMP only.

The test listens (as libqtest does) and migemu connects: qtest first, then QMP. The
protocol is checked with round trips and, when QEMU 7.2 is installed, against QEMU's own
answers; the migration-test boot sector (assembled in ``bootsect.py``) runs migemu's sweep
guest, which prints on the serial file and migrates consistently; process exits follow
QEMU (SIGTERM -> 0, the destination of a cancelled migration exits 1 by itself).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest
from bootsect import sweep_boot_sector
from harness import DEADLINE_S, QEMU, migemu_cmd
from qtest_harness import PAGE, SWEEP_START, QtestCluster

from migemu.emulator.guest.workload import check_sweep

pytestmark = pytest.mark.asyncio

# The same script for migemu and QEMU: RAM above 1 MiB is untouched while the VM is
# stopped (-S), so both must answer identically.
SCRIPT = [
    "endianness",
    "read 0x200000 0x4",
    "write 0x200000 0x3 0x112233",
    "read 0x200000 0x4",
    "write 0x200010 0x4 0x11",  # short data: the rest is zeros
    "read 0x200010 0x4",
    "writeb 0x200100 0x1ff",  # truncated to the access size
    "writew 0x200102 0xbeef",
    "writel 0x200104 0xdeadbeef",
    "writeq 0x200108 0x0102030405060708",
    "readb 0x200100",
    "readw 0x200102",
    "readl 0x200104",
    "readq 0x200108",
    "read 0x200100 0x10",
    "memset 0x200200 0x5 0xa5",
    "b64read 0x200200 0x6",
    "b64write 0x200300 0x4 AQIDBA==",
    "read 0x200300 0x4",
    "readl 0x800000000",  # unassigned: zeros
    "write 0x200400 0x2 0x",  # too short
    "clock_step 100",  # no qtest accelerator: unknown, as with TCG
    "clock_set 1000",
    "frobnicate 1 2",
]


@pytest.fixture
async def cluster(tmp_path):
    c = QtestCluster(tmp_path)
    yield c
    await c.close()


@pytest.fixture
def bootsect(tmp_path):
    path = tmp_path / "bootsect"
    path.write_bytes(sweep_boot_sector())
    return path


async def run_script(cluster, binary):
    vm = await cluster.start("vm", boot=None, extra=["-S"], binary=binary)
    return await vm.qtest_many(SCRIPT)


async def test_protocol_round_trips(cluster):
    answers = dict(zip(SCRIPT, await run_script(cluster, None), strict=True))
    assert answers["endianness"] == "OK little"
    assert answers["read 0x200000 0x4"] == "OK 0x11223300"
    assert answers["read 0x200010 0x4"] == "OK 0x11000000"
    assert answers["readb 0x200100"] == "OK 0x00000000000000ff"
    assert answers["readw 0x200102"] == "OK 0x000000000000beef"
    assert answers["readq 0x200108"] == "OK 0x0102030405060708"
    assert answers["read 0x200100 0x10"] == "OK 0xff00efbeefbeadde0807060504030201"
    assert answers["b64read 0x200200 0x6"] == "OK paWlpaUA"
    assert answers["read 0x200300 0x4"] == "OK 0x01020304"
    assert answers["write 0x200400 0x2 0x"] == "ERR invalid argument size"
    assert answers["clock_step 100"] == "FAIL Unknown command 'clock_step'"
    assert answers["frobnicate 1 2"] == "FAIL Unknown command 'frobnicate'"


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
async def test_protocol_matches_qemu(tmp_path):
    results = []
    for name, binary in (("migemu", None), ("qemu", [QEMU])):
        cluster = QtestCluster(tmp_path / name)
        (tmp_path / name).mkdir()
        try:
            results.append(await run_script(cluster, binary))
        finally:
            await cluster.close()
    assert results[0] == results[1]


async def test_qtest_log_format(cluster, tmp_path):
    log = tmp_path / "qtest.log"
    vm = await cluster.start("vm", boot=None, extra=["-S"], qtest_log=str(log))
    await vm.qtest("readb 0x100000")
    await vm.qtest("nope")
    assert await vm.terminate() == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "[I 0.000000] OPENED"
    assert re.fullmatch(r"\[R \+\d+\.\d{6}\] endianness", lines[1])
    assert re.fullmatch(r"\[S \+\d+\.\d{6}\] OK little", lines[2])
    assert re.fullmatch(r"\[R \+\d+\.\d{6}\] readb 0x100000", lines[3])
    assert re.fullmatch(r"\[S \+\d+\.\d{6}\] OK 0x0{16}", lines[4])
    assert re.fullmatch(r"\[S \+\d+\.\d{6}\] FAIL Unknown command 'nope'", lines[6])


async def test_qtest_connects_before_qmp(tmp_path):
    """Only the qtest socket listens: migemu must have connected it before failing on QMP."""
    qtest_path = tmp_path / "vm.qtest"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(qtest_path))
    listener.listen(1)
    listener.settimeout(DEADLINE_S)
    argv = [
        *migemu_cmd(), "-qtest", f"unix:{qtest_path}", "-qtest-log", "/dev/null",
        "-chardev", f"socket,path={tmp_path / 'absent.qmp'},id=char0",
        "-mon", "chardev=char0,mode=control", "-display", "none", "-S",
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE_S)
        conn, _ = listener.accept()  # queued by the kernel before migemu gave up on QMP
        conn.close()
    finally:
        listener.close()
    assert proc.returncode == 1
    assert "No such file or directory" in proc.stderr


async def test_qtest_connect_failure_is_qemus_error(tmp_path):
    proc = subprocess.run(
        [*migemu_cmd(), "-qtest", f"unix:{tmp_path / 'nobody'}", "-display", "none"],
        capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"migemu: Failed to connect to '{tmp_path / 'nobody'}': No such file or directory",
        f'migemu: Failed to initialize device for qtest: "unix:{tmp_path / "nobody"}"',
    ]


async def test_unrecognised_boot_image(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(510) + b"\x55\xaa")
    base = [*migemu_cmd(), "-display", "none", "-m", "150M", "-S"]
    drive = ["-drive", f"file={disk},format=raw"]
    proc = subprocess.run([*base, *drive], capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 1
    assert "cannot run this boot image" in proc.stderr
    assert "-migemu-guest idle" in proc.stderr
    missing = ["-drive", f"file={tmp_path / 'none.img'},format=raw"]
    proc = subprocess.run([*base, *missing], capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 1
    assert f"Could not open '{tmp_path / 'none.img'}': No such file or directory" in proc.stderr


async def test_idle_guest_on_request(cluster, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512))
    vm = await cluster.start("vm", boot=disk, extra=["-migemu-guest", "idle"])
    assert await vm.memread(SWEEP_START, 1) == b"\0"
    assert vm.serial.exists() and vm.serial.read_bytes() == b""
    assert await vm.terminate() == 0


async def test_sweep_guest_runs_and_stop_freezes_it(cluster, bootsect):
    vm = await cluster.start("vm", boot=bootsect)
    text = await vm.wait_serial("B")
    assert re.fullmatch("AB*", text)
    await wait_byte_change(vm)
    await vm.cmd("stop")
    before = await vm.sweep_column()
    assert column_consistent(before) is None
    after = await vm.sweep_column()  # 25k round trips later: nothing moved
    assert before == after
    await vm.cmd("cont")
    await vm.wait_serial("BB")
    assert await vm.terminate() == 0


async def wait_byte_change(vm, addr: int = SWEEP_START) -> None:
    """Poll (one qtest round trip each) until the guest changes the byte at ``addr``."""
    end = time.monotonic() + DEADLINE_S
    first = await vm.memread(addr, 1)
    while await vm.memread(addr, 1) == first:
        assert time.monotonic() < end, f"{vm.name}: the guest does not run"


def column_consistent(column: bytes) -> str | None:
    mem = bytearray(SWEEP_START + len(column) * PAGE)
    mem[SWEEP_START::PAGE] = column
    return check_sweep(memoryview(bytes(mem)), SWEEP_START, SWEEP_START + len(column) * PAGE)


async def migration_test_start(cluster, bootsect, *, dst_name="dst"):
    """test_migrate_start + the multifd start hook: two machines, 16 channels, defer."""
    src = await cluster.start("src", boot=bootsect)
    dst = await cluster.start(dst_name, boot=bootsect, incoming="defer")
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 30_000_000, "downtime-limit": 1})
    for vm in (src, dst):
        await vm.cmd("migrate-set-parameters", {"multifd-channels": 16})
        await vm.cmd("migrate-set-capabilities", {
            "capabilities": [{"capability": "multifd", "state": True}]
        })  # fmt: skip
    await dst.cmd("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    return src, dst


async def dst_uri(dst):
    addr = (await dst.cmd("query-migrate"))["socket-address"][0]
    return f"tcp:{addr['host']}:{addr['port']}"


async def wait_for_pass(vm):
    """wait_for_migration_pass: the first dirty sync, then one more."""

    async def passes():
        info = await vm.cmd("query-migrate")
        assert info["status"] not in ("failed", "cancelled"), info
        return info.get("ram", {}).get("dirty-sync-count", 0)

    first = 0
    while not first:
        first = await passes()
    while await passes() == first:
        pass


@pytest.mark.parametrize("method", ["none", "zstd"])
async def test_migration_like_migration_test(cluster, bootsect, method):
    src, dst = await migration_test_start(cluster, bootsect)
    for vm in (src, dst):
        await vm.cmd("migrate-set-parameters", {"multifd-compression": method})
    await src.wait_serial("B")
    await src.cmd("migrate", {"uri": await dst_uri(dst)})
    await wait_for_pass(src)
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 10**9, "downtime-limit": 30_000})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    await src.wait_event("STOP")
    await dst.wait_event("RESUME")
    assert re.fullmatch("B+", await dst.wait_serial("B"))  # the destination never boots
    assert await src.terminate() == 0
    await wait_byte_change(dst)  # the destination's vCPU runs
    await dst.cmd("stop")
    assert column_consistent(await dst.sweep_column()) is None
    assert await dst.terminate() == 0


async def test_cancel_then_migrate_to_a_new_destination(cluster, bootsect):
    src, dst = await migration_test_start(cluster, bootsect)
    await src.wait_serial("B")
    await src.cmd("migrate", {"uri": await dst_uri(dst)})
    await wait_for_pass(src)
    await src.cmd("migrate_cancel")
    assert await dst.wait_exit() == 1  # by itself, as QEMU's destination does
    dst2 = await cluster.start("dst2", boot=bootsect, incoming="defer")
    await dst2.cmd("migrate-set-parameters", {"multifd-channels": 16})
    await dst2.cmd("migrate-set-capabilities", {
        "capabilities": [{"capability": "multifd", "state": True}]
    })  # fmt: skip
    await dst2.cmd("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    await src.wait_status(["cancelled"])
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 10**9, "downtime-limit": 30_000})
    await src.cmd("migrate", {"uri": await dst_uri(dst2)})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    await dst2.wait_event("RESUME")
    await dst2.wait_serial("B")
    assert await src.terminate() == 0
    await dst2.cmd("stop")
    assert column_consistent(await dst2.sweep_column()) is None
    assert await dst2.terminate() == 0


@pytest.mark.parametrize("method", ["zstd", "zlib"])
async def test_paused_destination_equals_stopped_source(cluster, bootsect, method):
    """With -S the destination keeps the migrated memory: it must equal the source's, page
    for page (compressed packets arrive many per read; all of an epoch's must land before
    its SYNC is honoured)."""
    src = await cluster.start("src", boot=bootsect)
    dst = await cluster.start("dst", boot=bootsect, incoming="defer", extra=["-S"])
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 30_000_000, "downtime-limit": 1})
    for vm in (src, dst):
        await vm.cmd(
            "migrate-set-parameters", {"multifd-channels": 16, "multifd-compression": method}
        )
        await vm.cmd("migrate-set-capabilities", {
            "capabilities": [{"capability": "multifd", "state": True}]
        })  # fmt: skip
    await dst.cmd("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    await src.wait_serial("B")
    await src.cmd("migrate", {"uri": await dst_uri(dst)})
    await wait_for_pass(src)
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 10**9, "downtime-limit": 30_000})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    await dst.wait_status(["completed"])
    source = await src.sweep_column()
    assert column_consistent(source) is None
    assert await dst.sweep_column() == source


async def test_serial_file_errors_as_qemu(tmp_path):
    bad = tmp_path / "no" / "serial"
    argv = ["-display", "none", "-m", "150M", "-monitor", "none", "-serial", f"file:{bad}"]
    proc = subprocess.run(
        [*migemu_cmd(), *argv], capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert proc.returncode == 1
    lines = [line.split(": ", 1)[1] for line in proc.stderr.splitlines()]
    assert lines == [
        f"-serial file:{bad}: Could not open '{bad}': No such file or directory",
        f"-serial file:{bad}: could not connect serial device to character backend 'file:{bad}'",
    ]
    if QEMU is not None:
        real = subprocess.run([QEMU, *argv], capture_output=True, text=True, timeout=DEADLINE_S)
        assert [line.split(": ", 1)[1] for line in real.stderr.splitlines()] == lines
