"""Test harness for end-to-end tests: a thin layer over the public ``migemu.testing`` API.

Like QEMU's own migration qtest, tests start processes with a command line, talk to them
with ``qemu.qmp``'s ``QMPClient``, wait for states with deadlines (never fixed sleeps) and
end every process they start, by PID. ``VM`` and ``connect_when_ready`` are
``migemu.testing``'s; ``Cluster`` keeps a test's processes and files in its tmp_path, and the
rest are the project's own helpers (images, hashes, the common multifd set-up).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from migemu.testing.vm import DEFAULT_TIMEOUT_S, VM, connect_when_ready, migemu_command

__all__ = [
    "DEADLINE_S",
    "MAKE_IMAGE",
    "QEMU",
    "SHARED",
    "VM",
    "Cluster",
    "connect_when_ready",
    "file_size",
    "make_image",
    "migemu_cmd",
    "page_stats",
    "qemu_cmd",
    "setup_pair",
    "sha256",
]

QEMU = shutil.which("qemu-system-x86_64")
DEADLINE_S = DEFAULT_TIMEOUT_S
SHARED = Path(__file__).parents[2].parent / "shared"
MAKE_IMAGE = SHARED / "reference" / "make_image.py"

migemu_cmd = migemu_command


def qemu_cmd() -> list[str]:
    assert QEMU is not None
    return [QEMU, "-nodefaults", "-display", "none"]


def make_image(path: Path, mib: int, seed: int = 1) -> None:
    """A realistic RAM image (zero, text, sparse and random pages), deterministic."""
    from migemu.emulator.guest.image import write_image

    write_image(str(path), mib << 20, seed=seed)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Cluster:
    """The processes of one test, with their files in ``tmp``; ``close()`` ends them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.vms: list[VM] = []

    async def start(
        self,
        name: str,
        *,
        mem_mib: int = 32,
        image: Path | None = None,
        share: bool = True,
        incoming: str | None = None,
        extra: Sequence[str] = (),
        binary: Sequence[str] | None = None,
    ) -> VM:
        vm = VM(
            name,
            memory=mem_mib << 20,
            ram=image,
            share=share,
            incoming=incoming,
            args=extra,
            binary=binary or migemu_cmd(),
            timeout=DEADLINE_S,
        )
        vm.use_workdir(self.tmp)
        self.vms.append(vm)
        await vm.start()
        return vm

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def close(self) -> None:
        for vm in self.vms:
            await vm.close()


async def setup_pair(
    src: VM,
    dst: VM,
    *,
    multifd: bool,
    method: str = "none",
    channels: int = 2,
    events: bool = True,
    bandwidth: int = 1 << 40,
    extra_caps: Sequence[str] = (),
) -> str:
    """Same capabilities and parameters on both sides; dst listens; returns the URI."""
    caps = [{"capability": "events", "state": events}, {"capability": "multifd", "state": multifd}]
    caps += [{"capability": c, "state": True} for c in extra_caps]
    for vm in (src, dst):
        await vm.cmd("migrate-set-capabilities", {"capabilities": caps})
        await vm.cmd(
            "migrate-set-parameters",
            {
                "multifd-channels": channels,
                "multifd-compression": method,
                "max-bandwidth": bandwidth,
            },
        )
    await dst.cmd("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    info = await dst.cmd("query-migrate")
    return f"tcp:127.0.0.1:{info['socket-address'][0]['port']}"


def page_stats(path: Path) -> tuple[int, int]:
    """(zero pages, non-zero pages) of a RAM file."""
    data = path.read_bytes()
    zero = bytes(4096)
    n = len(data) // 4096
    zeros = sum(1 for i in range(n) if data[i * 4096 : (i + 1) * 4096] == zero)
    return zeros, n - zeros


def file_size(path: Path) -> int:
    return os.stat(path).st_size
