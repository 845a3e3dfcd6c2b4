"""monitor_fds (getfd names, fd sets, received descriptors) and the SCM_RIGHTS transport."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from migemu.emulator.monitor_fds import (
    FdSets,
    NamedFds,
    ReceivedFds,
    parse_fd_number,
)
from migemu.emulator.qmp.unixfd import UnixFdTransport
from migemu.qapi.errors import QMPError


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def pipe_fds():
    opened: list[int] = []

    def make() -> int:
        r, w = os.pipe()
        os.close(w)
        opened.append(r)
        return r

    yield make
    for fd in opened:
        if is_open(fd):
            os.close(fd)


@pytest.mark.parametrize(
    "text,value",
    [("0", 0), ("17", 17), (" 5", 5), ("+3", 3), ("-0", 0), ("2147483647", 2147483647)],
)
def test_parse_fd_number_accepts_what_strtol_reads_whole(text: str, value: int) -> None:
    assert parse_fd_number(text) == value


@pytest.mark.parametrize("text", ["", "x", "12x", "5 ", "-1", "2147483648", "1_0", "0x1", "٣"])
def test_parse_fd_number_refuses(text: str) -> None:
    assert parse_fd_number(text) is None


def test_named_fds_replace_take_close(pipe_fds) -> None:
    named = NamedFds()
    a, b = pipe_fds(), pipe_fds()
    named.put("x", a)
    named.put("x", b)
    assert not is_open(a)  # replaced: closed, as qmp_getfd does
    assert named.take("x") == b
    with pytest.raises(QMPError, match="^File descriptor named 'x' has not been found$"):
        named.take("x")
    with pytest.raises(QMPError, match="^File descriptor named 'x' not found$"):
        named.close("x")


def test_received_fds_new_ones_replace_old_and_take_drops_the_rest(pipe_fds) -> None:
    rx = ReceivedFds()
    a, b, c = pipe_fds(), pipe_fds(), pipe_fds()
    rx.add([a])
    rx.add([b, c])
    assert not is_open(a)
    assert rx.take() == b
    assert not is_open(c)
    assert rx.take() is None


def test_fdsets_ids_order_and_removal(pipe_fds) -> None:
    sets = FdSets()
    fds = [pipe_fds() for _ in range(4)]
    assert sets.add(fds[0], 2, "two") == {"fdset-id": 2, "fd": fds[0]}
    assert sets.add(fds[1], None, None)["fdset-id"] == 0
    assert sets.add(fds[2], None, None)["fdset-id"] == 1
    assert sets.add(fds[3], 2, None)["fdset-id"] == 2
    assert [s["fdset-id"] for s in sets.query()] == [2, 1, 0]
    assert sets.query()[0]["fds"] == [{"fd": fds[0], "opaque": "two"}, {"fd": fds[3]}]
    sets.remove(2, fds[0])
    assert not is_open(fds[0]) and is_open(fds[3])
    sets.remove(2, None)
    assert [s["fdset-id"] for s in sets.query()] == [1, 0]
    with pytest.raises(QMPError, match=r"^File descriptor named 'fdset-id:1, fd:99999' not found"):
        sets.remove(1, 99999)


def test_fdsets_keep_removed_fds_while_the_guest_is_not_running(pipe_fds) -> None:
    running = False
    sets = FdSets(running=lambda: running)
    fd = pipe_fds()
    sets.add(fd, 0, None)
    sets.remove(0, None)
    assert is_open(fd) and sets.query() == [{"fdset-id": 0, "fds": [{"fd": fd}]}]
    running = True
    sets.cleanup()
    assert not is_open(fd) and sets.query() == []


async def test_transport_hands_descriptors_over_before_the_bytes(pipe_fds) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    seen: list[tuple[str, object]] = []
    got_data = asyncio.Event()

    class Proto(asyncio.Protocol):
        def fds_received(self, fds: list[int]) -> None:
            seen.append(("fds", len(fds)))
            for fd in fds:
                os.close(fd)

        def data_received(self, data: bytes) -> None:
            seen.append(("data", data))
            got_data.set()

        def connection_lost(self, exc: Exception | None) -> None:
            seen.append(("lost", exc))

    transport = UnixFdTransport(loop, ours, Proto())
    try:
        socket.send_fds(theirs, [b"hello"], [pipe_fds(), pipe_fds()])
        await asyncio.wait_for(got_data.wait(), 10)
        assert seen == [("fds", 2), ("data", b"hello")]
        transport.write(b"x" * 200000)  # more than the socket buffer: flow control
        received = 0
        theirs.setblocking(False)
        deadline = loop.time() + 10
        while received < 200000 and loop.time() < deadline:
            try:
                received += len(theirs.recv(65536))
            except BlockingIOError:
                await asyncio.sleep(0.005)
        assert received == 200000
    finally:
        transport.close()
        theirs.close()
    deadline = loop.time() + 10
    while ("lost", None) not in seen and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert seen[-1] == ("lost", None)
