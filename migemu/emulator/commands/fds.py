"""Descriptor commands: getfd, closefd, add-fd, remove-fd, query-fdsets (emulator layer).

QEMU 7.2's ``monitor/misc.c`` semantics and texts; the bookkeeping is ``monitor_fds``. The
checks run in QEMU's order: first whether a descriptor came with the command (SCM_RIGHTS),
then the arguments.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from migemu.emulator import monitor_fds
from migemu.emulator.monitor_fds import NO_FD_SUPPLIED, MonitorFdContext
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def _context() -> MonitorFdContext:
    ctx = monitor_fds.current()
    if ctx is None:
        raise QMPError(NO_FD_SUPPLIED)
    return ctx


def register(machine: Machine) -> None:
    d = machine.dispatcher

    def getfd(args: dict[str, Any]) -> None:
        ctx = _context()
        fd = ctx.take_received()
        name = args["fdname"]
        if name[:1].isdigit():
            os.close(fd)
            raise QMPError("Parameter 'fdname' expects a name not starting with a digit")
        ctx.named.put(name, fd)

    def closefd(args: dict[str, Any]) -> None:
        ctx = monitor_fds.current()
        name = args["fdname"]
        if ctx is None:
            raise QMPError(f"File descriptor named '{name}' not found")
        ctx.named.close(name)

    def add_fd(args: dict[str, Any]) -> dict[str, int]:
        fd = _context().take_received()
        try:
            return machine.fdsets.add(fd, args.get("fdset-id"), args.get("opaque"))
        except QMPError:
            os.close(fd)
            raise

    def remove_fd(args: dict[str, Any]) -> None:
        machine.fdsets.remove(args["fdset-id"], args.get("fd"))

    d.register("getfd", getfd)
    d.register("closefd", closefd)
    d.register("add-fd", add_fd)
    d.register("remove-fd", remove_fd)
    d.register("query-fdsets", lambda args: machine.fdsets.query())
