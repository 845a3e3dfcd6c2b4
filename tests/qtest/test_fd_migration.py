"""fd: migration and the descriptor commands, end to end and against real QEMU 7.2.

``getfd`` receives a descriptor by SCM_RIGHTS on the QMP unix socket; ``migrate fd:NAME``
writes the stream into it (here a file: a save file, as ``virsh save`` makes); a new process
started with ``-incoming defer`` and an inherited descriptor restores it with
``migrate-incoming fd:N``. Each save/restore runs migemu -> QEMU and QEMU -> migemu (and
migemu -> migemu through a pipe), and the destination RAM must equal the image. The error
texts of getfd/closefd/add-fd/remove-fd and of bad fd: URIs are compared with QEMU's.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from harness import QEMU, VM, Cluster, connect_when_ready, make_image, migemu_cmd, qemu_cmd, sha256
from qemu.qmp import ExecuteError, QMPClient

pytestmark = pytest.mark.asyncio
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")

MIB = 16
BINARIES = ["migemu", pytest.param("qemu", marks=needs_qemu)]


def binary(name: str) -> list[str]:
    return qemu_cmd() if name == "qemu" else migemu_cmd()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.ram"
    make_image(path, MIB, seed=7)
    return path


@pytest.fixture
async def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    yield c
    await c.close()


async def start_with_fd(
    cluster: Cluster,
    name: str,
    fd: int,
    argv0: Sequence[str],
    extra: Sequence[str] = (),
    incoming: str = "defer",
) -> VM:
    """A destination that inherits ``fd`` (as libvirt's restore does), ``-incoming defer``."""
    sock = cluster.tmp / f"{name}.sock"
    ram = cluster.tmp / f"{name}.ram"
    argv = [
        *argv0,
        "-machine", "none", "-m", f"{MIB}M",
        "-object", f"memory-backend-file,id=mem0,size={MIB}M,mem-path={ram},share=on",
        "-machine", "memory-backend=mem0",
        "-qmp", f"unix:{sock},server=on,wait=off",
        "-incoming", incoming,
        *extra,
    ]  # fmt: skip
    log = open(cluster.tmp / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,))
    log.close()
    qmp = QMPClient(name)
    try:
        await connect_when_ready(qmp, sock, proc, lambda: cluster.log(name))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    vm = VM.adopt(name, proc, qmp, sock, ram, workdir=cluster.tmp)
    cluster.vms.append(vm)
    return vm


async def getfd(vm: VM, fd: int, name: str) -> None:
    vm.qmp.send_fd_scm(fd)
    await vm.cmd("getfd", {"fdname": name})


async def save(src: VM, fd: int) -> dict[str, Any]:
    """virsh save: getfd "migrate", then migrate fd:migrate; the source ends paused."""
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    await getfd(src, fd, "migrate")
    await src.cmd("migrate", {"uri": "fd:migrate"})
    return await src.wait_status(["completed", "failed"])


async def restore(dst: VM, fd: int) -> dict[str, Any]:
    await dst.cmd("migrate-incoming", {"uri": f"fd:{fd}"})
    return await dst.wait_status(["completed", "failed"])


@pytest.mark.parametrize(
    "src_bin,dst_bin",
    [
        ("migemu", "migemu"),
        pytest.param("migemu", "qemu", marks=needs_qemu),
        pytest.param("qemu", "migemu", marks=needs_qemu),
    ],
)
async def test_save_to_file_and_restore(cluster, tmp_path, image, src_bin, dst_bin):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False, binary=binary(src_bin))
    save_file = tmp_path / "guest.save"
    fd = os.open(save_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        info = await save(src, fd)
    finally:
        os.close(fd)  # the source holds its own copy; ours goes
    assert info["status"] == "completed", info
    assert (await src.cmd("query-status"))["status"] == "postmigrate"
    # the name was used up by migrate, as in QEMU
    with pytest.raises(ExecuteError, match="File descriptor named 'migrate' not found"):
        await src.cmd("closefd", {"fdname": "migrate"})
    data = save_file.read_bytes()
    assert data[:4] == b"QEVM"

    fd = os.open(save_file, os.O_RDONLY)
    try:
        dst = await start_with_fd(cluster, "dst", fd, binary(dst_bin))
        assert (await restore(dst, fd))["status"] == "completed"
    finally:
        os.close(fd)
    assert sha256(dst.ram) == sha256(image)
    assert (await dst.cmd("query-status"))["status"] == "running"


async def test_restore_from_incoming_fd_on_the_command_line(cluster, tmp_path, image):
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    save_file = tmp_path / "guest.save"
    fd = os.open(save_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        assert (await save(src, fd))["status"] == "completed"
    finally:
        os.close(fd)
    fd = os.open(save_file, os.O_RDONLY)
    try:
        dst = await start_with_fd(cluster, "dst", fd, migemu_cmd(), incoming=f"fd:{fd}")
        assert (await dst.wait_status(["completed", "failed"]))["status"] == "completed"
    finally:
        os.close(fd)
    assert sha256(dst.ram) == sha256(image)
    assert "socket-address" not in await dst.cmd("query-migrate")


async def test_save_through_a_pipe(cluster, image):
    """The stream may go into a pipe (``virsh save`` through its iohelper); migemu on both
    ends, the destination reading the inherited read end (pass_fds keeps its number)."""
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    rfd, wfd = os.pipe()
    try:
        dst = await start_with_fd(cluster, "dst", rfd, migemu_cmd())
        await dst.cmd("migrate-incoming", {"uri": f"fd:{rfd}"})
        os.close(rfd)
        rfd = -1
        info = await save(src, wfd)
        os.close(wfd)
        wfd = -1
        assert info["status"] == "completed", info
        assert (await dst.wait_status(["completed", "failed"]))["status"] == "completed"
    finally:
        for fd in (rfd, wfd):
            if fd >= 0:
                os.close(fd)
    assert sha256(dst.ram) == sha256(image)


async def answer(vm: VM, name: str, args: dict[str, Any] | None = None) -> Any:
    """The command's return value, or ("error", class, desc)."""
    try:
        return await vm.cmd(name, args)
    except ExecuteError as err:
        error = err.received["error"]
        return ("error", error["class"], error["desc"])


def without_fd_numbers(value: Any) -> Any:
    """Descriptor numbers differ between two processes; everything else must not."""
    if isinstance(value, dict):
        return {k: ("N" if k == "fd" else without_fd_numbers(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [without_fd_numbers(v) for v in value]
    if isinstance(value, tuple):
        return tuple(re.sub(r"fd:\d+", "fd:N", v) if isinstance(v, str) else v for v in value)
    return value


async def fd_command_transcript(vm: VM, tmp: Path) -> list[Any]:
    out: list[Any] = []
    spare = os.open(tmp / "spare", os.O_RDWR | os.O_CREAT, 0o600)
    try:

        async def with_fd(name: str, args: dict[str, Any]) -> Any:
            vm.qmp.send_fd_scm(spare)
            return await answer(vm, name, args)

        out.append(await answer(vm, "getfd", {"fdname": "a"}))
        out.append(await with_fd("getfd", {"fdname": "1a"}))
        out.append(await with_fd("getfd", {"fdname": "a"}))
        out.append(await with_fd("getfd", {"fdname": "a"}))  # replaces the first
        out.append(await answer(vm, "closefd", {"fdname": "a"}))
        out.append(await answer(vm, "closefd", {"fdname": "a"}))
        out.append(await answer(vm, "add-fd", {}))
        out.append(await with_fd("add-fd", {"fdset-id": -1}))
        out.append(await with_fd("add-fd", {"fdset-id": 3, "opaque": "three"}))
        out.append(await with_fd("add-fd", {"fdset-id": 3}))
        out.append(await with_fd("add-fd", {}))
        out.append(await with_fd("add-fd", {}))
        out.append(await answer(vm, "query-fdsets"))
        out.append(await answer(vm, "remove-fd", {"fdset-id": 3, "fd": 100000}))
        out.append(await answer(vm, "remove-fd", {"fdset-id": 7}))
        out.append(await answer(vm, "remove-fd", {"fdset-id": 3}))
        out.append(await answer(vm, "query-fdsets"))
        out.append(await answer(vm, "migrate", {"uri": "fd:nothing"}))
        info = await vm.cmd("query-migrate")
        out.append({k: info.get(k) for k in ("status", "error-desc")})
        out.append(await answer(vm, "migrate", {"uri": "fd:3"}))
    finally:
        os.close(spare)
    return out


@needs_qemu
async def test_fd_command_errors_match_qemu(cluster, tmp_path):
    transcripts = []
    for name in ("migemu", "qemu"):
        vm = await cluster.start(name, mem_mib=MIB, binary=binary(name))
        transcripts.append(without_fd_numbers(await fd_command_transcript(vm, tmp_path)))
    ours, qemus = transcripts
    assert ours == qemus
    assert ours[0] == ("error", "GenericError", "No file descriptor supplied via SCM_RIGHTS")


async def incoming_transcript(vm: VM) -> list[Any]:
    out = [
        await answer(vm, "migrate-incoming", {"uri": "fd:nothing"}),
        await answer(vm, "migrate-incoming", {"uri": "fd:12x"}),
        await answer(vm, "migrate-incoming", {"uri": "fd:-1"}),
    ]
    info = await vm.cmd("query-migrate")
    out.append(info.get("status"))
    return out


@needs_qemu
async def test_incoming_fd_errors_match_qemu(cluster):
    ours = await incoming_transcript(await cluster.start("m", incoming="defer", mem_mib=MIB))
    qemus = await incoming_transcript(
        await cluster.start("q", incoming="defer", mem_mib=MIB, binary=qemu_cmd())
    )
    assert ours == qemus
    assert ours[1] == ("error", "GenericError", "Invalid file descriptor number '12x'")


@pytest.mark.parametrize("name", BINARIES)
async def test_multifd_is_refused_on_fd(cluster, tmp_path, name):
    """With fd: 7.2 uses no multifd channel: the migration fails at once (no error-desc)."""
    vm = await cluster.start(name, mem_mib=MIB, binary=binary(name))
    await vm.cmd(
        "migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]}
    )
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        await getfd(vm, fd, "migrate")
    finally:
        os.close(fd)
    await vm.cmd("migrate", {"uri": "fd:migrate"})
    info = await vm.wait_status(["failed", "completed"])
    assert info["status"] == "failed" and "error-desc" not in info
    assert (await vm.cmd("query-status"))["status"] == "running"
    assert "multifd is not supported by current protocol" in cluster.log(name)


@needs_qemu
async def test_hmp_getfd_closefd_match_qemu(cluster):
    """Through human-monitor-command (a fresh HMP monitor: no descriptor, empty table)."""
    lines = ["getfd foo", "closefd foo", "getfd", "getfd 1x", "help getfd", "help closefd"]
    # a name given on the QMP monitor is that monitor's: HMP does not see it
    lines += ["closefd qmpname", "migrate fd:qmpname"]
    answers = []
    for name in ("migemu", "qemu"):
        vm = await cluster.start(name, mem_mib=MIB, binary=binary(name))
        r, w = os.pipe()
        try:
            await getfd(vm, w, "qmpname")
        finally:
            os.close(r)
            os.close(w)
        answers.append(
            [await vm.cmd("human-monitor-command", {"command-line": line}) for line in lines]
        )
        await vm.cmd("closefd", {"fdname": "qmpname"})  # still there on QMP
    assert answers[0] == answers[1]
    assert answers[0][0] == "Error: No file descriptor supplied via SCM_RIGHTS\r\n"


ADD_FD_ERRORS = ["fd=1,set=2", "set=2", "fd=FD", "fd=x", "fd=FD,foo=1", "fd=99,set=1"]


def startup_error(argv0: list[str], option: str, fd: int) -> str:
    proc = subprocess.run(
        [*argv0, "-machine", "none", "-add-fd", option.replace("FD", str(fd))],
        capture_output=True,
        text=True,
        timeout=60,
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    return proc.stderr.split(": ", 1)[1]  # without the program name


@needs_qemu
@pytest.mark.parametrize("option", ADD_FD_ERRORS)
async def test_add_fd_option_errors_match_qemu(tmp_path, option):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert startup_error(migemu_cmd(), option, fd) == startup_error(qemu_cmd(), option, fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", BINARIES)
async def test_add_fd_option_fills_the_fdset(cluster, tmp_path, name):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        vm = await start_with_fd(
            cluster, name, fd, binary(name), ["-add-fd", f"fd={fd},set=4,opaque=disk"]
        )
    finally:
        os.close(fd)
    sets = await vm.cmd("query-fdsets")
    assert without_fd_numbers(sets) == [{"fdset-id": 4, "fds": [{"fd": "N", "opaque": "disk"}]}]


async def pipe_migration(cluster: Cluster, src: VM, name: str) -> tuple[VM, int]:
    """A migemu destination reading the read end of a new pipe; the source holds the write
    end as getfd "migrate". Returns the destination and the write end (still ours too)."""
    rfd, wfd = os.pipe()
    try:
        dst = await start_with_fd(cluster, name, rfd, migemu_cmd(), incoming=f"fd:{rfd}")
    finally:
        os.close(rfd)
    src.qmp.send_fd_scm(wfd)
    await src.cmd("getfd", {"fdname": "migrate"})
    return dst, wfd


async def test_fault_on_a_pipe_then_recovery(cluster, tmp_path, image):
    """The fault matrix's close-main on an fd: migration: the source fails with the file
    channel's text, did no IO after the error, runs on with its RAM unchanged; the
    destination exits 1; a new fd: migration then completes with identical RAM."""
    live = tmp_path / "live.ram"
    live.write_bytes(image.read_bytes())
    src = await cluster.start("src", mem_mib=MIB, image=live, share=True)
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 8 << 20, "downtime-limit": 1})
    dst, wfd = await pipe_migration(cluster, src, "dst1")
    os.close(wfd)
    await src.cmd("x-migemu-inject-fault", {"spec": "close-main,at=iterate"})
    await src.cmd("migrate", {"uri": "fd:migrate"})
    info = await src.wait_status(["failed", "completed", "cancelled"])
    assert info["status"] == "failed", info
    assert info["error-desc"] == "Unable to write to file: Broken pipe"
    assert await dst.wait_exit() == 1
    assert (await src.cmd("query-status"))["status"] == "running"
    links = await src.cmd("x-migemu-query-links")
    mine = [link for link in links if link["migration"] == max(x["migration"] for x in links)]
    assert len(mine) == 1 and mine[0]["io-after-error"] == 0, mine
    assert sha256(live) == sha256(image)
    await src.cmd("x-migemu-clear-faults")

    await src.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40, "downtime-limit": 300})
    dst2, wfd = await pipe_migration(cluster, src, "dst2")
    os.close(wfd)
    await src.cmd("migrate", {"uri": "fd:migrate"})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    assert (await dst2.wait_status(["completed", "failed"]))["status"] == "completed"
    assert sha256(dst2.ram) == sha256(image)


async def test_cancel_ends_a_stalled_pipe(cluster, image):
    """Nobody reads the pipe: the source blocks on a full pipe, and migrate_cancel still
    ends the migration (the file stream polls, so a shutdown is seen)."""
    src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
    await src.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    rfd, wfd = os.pipe()
    try:
        await getfd(src, wfd, "migrate")
        await src.cmd("migrate", {"uri": "fd:migrate"})
        info = await src.wait_status(["active"])
        assert info["status"] == "active"
        await src.cmd("migrate_cancel")
        assert (await src.wait_status(["cancelled", "failed", "completed"])) == {
            "status": "cancelled"
        }
    finally:
        os.close(rfd)
        os.close(wfd)
    assert (await src.cmd("query-status"))["status"] == "running"
