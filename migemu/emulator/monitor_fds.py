"""File descriptors handed to the monitors: getfd names and add-fd sets (emulator layer).

A QMP client on a unix socket passes descriptors with SCM_RIGHTS. The QMP server keeps the
last ones received on a connection (``ReceivedFds``) and a command that wants one takes it,
as QEMU's ``qemu_chr_fe_get_msgfd`` does. ``getfd`` files it under a name in the monitor's
``NamedFds`` (one table per monitor, kept across its clients, like QEMU's ``mon->fds``);
``migrate fd:NAME`` takes it out again (the name is gone afterwards). ``add-fd`` puts it into
an fd set (``FdSets``, one per process, like QEMU's ``mon_fdsets``). ``current_monitor`` is
the monitor whose command is running (commands run one at a time on the event loop).
No sockets here: the server passes the received numbers in.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from migemu.qapi.errors import QMPError

_FD_NUMBER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")
NO_FD_SUPPLIED = "No file descriptor supplied via SCM_RIGHTS"


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class ReceivedFds:
    """The descriptors that came with the latest data on one connection. New ones replace
    (and close) those not taken yet; taking one drops the rest, as QEMU's socket chardev."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def add(self, fds: list[int]) -> None:
        self.clear()
        self._fds = list(fds)

    def take(self) -> int | None:
        if not self._fds:
            return None
        fd, rest = self._fds[0], self._fds[1:]
        self._fds = []
        for other in rest:
            _close(other)
        return fd

    def clear(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            _close(fd)


class NamedFds:
    """One monitor's ``getfd`` table: name -> descriptor."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def names(self) -> list[str]:
        return list(self._fds)

    def put(self, name: str, fd: int) -> None:
        """Store ``fd`` under ``name``; an fd already there is closed (qmp_getfd)."""
        old = self._fds.get(name)
        self._fds[name] = fd
        if old is not None:
            _close(old)

    def close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is None:
            raise QMPError(f"File descriptor named '{name}' not found")
        _close(fd)

    def take(self, name: str) -> int:
        """The caller owns the descriptor from now on (monitor_get_fd)."""
        fd = self._fds.pop(name, None)
        if fd is None:
            raise QMPError(f"File descriptor named '{name}' has not been found")
        return fd

    def close_all(self) -> None:
        for name in list(self._fds):
            self.close(name)


@dataclass
class _FdsetFd:
    fd: int
    opaque: str | None
    removed: bool = False


@dataclass
class _Fdset:
    id: int
    fds: list[_FdsetFd] = field(default_factory=list)  # newest first, as QEMU inserts


class FdSets:
    """The process's fd sets (``add-fd``, ``remove-fd``, ``query-fdsets``, ``-add-fd``).

    ``running``: whether the guest runs. QEMU 7.2 closes a removed descriptor only while the
    VM runs (``monitor_fdset_cleanup``); otherwise it stays listed until a later cleanup.
    ``clients``: how many QMP clients are connected (QEMU's ``mon_refcount``): with none, a
    cleanup closes every descriptor not in use.
    """

    def __init__(
        self, running: Callable[[], bool] = lambda: True, clients: Callable[[], int] = lambda: 1
    ) -> None:
        self._sets: list[_Fdset] = []  # ordered by id
        self.running = running
        self.clients = clients

    def add(self, fd: int, fdset_id: int | None, opaque: str | None) -> dict[str, int]:
        """Put ``fd`` into set ``fdset_id`` (or the lowest free id); returns AddfdInfo."""
        fdset = next((s for s in self._sets if s.id == fdset_id), None)
        if fdset is None:
            if fdset_id is None:
                new_id = 0
                for s in self._sets:
                    if s.id != new_id:
                        break
                    new_id += 1
            else:
                if fdset_id < 0:
                    raise QMPError("Parameter 'fdset-id' expects a non-negative value")
                new_id = fdset_id
            fdset = _Fdset(new_id)
            self._sets.append(fdset)
            self._sets.sort(key=lambda s: s.id)
        fdset.fds.insert(0, _FdsetFd(fd, opaque))
        return {"fdset-id": fdset.id, "fd": fd}

    def remove(self, fdset_id: int, fd: int | None) -> None:
        for fdset in self._sets:
            if fdset.id != fdset_id:
                continue
            if fd is None:
                for entry in fdset.fds:
                    entry.removed = True
            else:
                match = next((e for e in fdset.fds if e.fd == fd), None)
                if match is None:
                    break
                match.removed = True
            self._cleanup(fdset)
            return
        what = f"fdset-id:{fdset_id}" if fd is None else f"fdset-id:{fdset_id}, fd:{fd}"
        raise QMPError(f"File descriptor named '{what}' not found")

    def cleanup(self) -> None:
        """monitor_fdsets_cleanup (a QMP client left, the run state changed)."""
        for fdset in list(self._sets):
            self._cleanup(fdset)

    def _cleanup(self, fdset: _Fdset) -> None:
        if self.running():
            unused = self.clients() == 0
            for entry in list(fdset.fds):
                if entry.removed or unused:
                    _close(entry.fd)
                    fdset.fds.remove(entry)
        if not fdset.fds:
            self._sets.remove(fdset)

    def query(self) -> list[dict[str, Any]]:
        """query-fdsets: QEMU prepends as it walks, so sets come highest id first and each
        set's descriptors oldest first."""
        out: list[dict[str, Any]] = []
        for fdset in self._sets:
            fds: list[dict[str, Any]] = []
            for entry in fdset.fds:
                info: dict[str, Any] = {"fd": entry.fd}
                if entry.opaque is not None:
                    info["opaque"] = entry.opaque
                fds.insert(0, info)
            out.insert(0, {"fdset-id": fdset.id, "fds": fds})
        return out


@dataclass
class MonitorFdContext:
    """What a running command may use: its monitor's named fds and the received ones."""

    named: NamedFds
    received: ReceivedFds | None = None  # None: a monitor that cannot receive descriptors

    def take_received(self) -> int:
        fd = self.received.take() if self.received is not None else None
        if fd is None:
            raise QMPError(NO_FD_SUPPLIED)
        return fd


current_monitor: contextvars.ContextVar[MonitorFdContext | None] = contextvars.ContextVar(
    "current_monitor", default=None
)


def current() -> MonitorFdContext | None:
    return current_monitor.get()


def parse_fd_number(text: str) -> int | None:
    """qemu_parse_fd: what strtol reads in full (leading blanks, a sign, decimal digits),
    0..INT_MAX; anything else is ``None``."""
    if _FD_NUMBER.fullmatch(text) is None:
        return None
    value = int(text.lstrip(" \t\n\v\f\r"), 10)
    return value if 0 <= value <= 0x7FFFFFFF else None


def fd_param(name: str) -> int:
    """monitor_fd_param: a name from the current monitor's getfd table, or (starting with
    a digit, or with no monitor, as on the command line) a descriptor number."""
    ctx = current()
    if name[:1].isdigit() or ctx is None:
        fd = parse_fd_number(name)
        if fd is None:
            raise QMPError(f"Invalid file descriptor number '{name}'")
        return fd
    return ctx.named.take(name)


def take_named(name: str) -> int:
    """monitor_get_fd on the current monitor (``migrate fd:NAME``)."""
    ctx = current()
    if ctx is None:
        raise QMPError(f"File descriptor named '{name}' has not been found")
    return ctx.named.take(name)
