"""Helpers shared by the multifd tests: reference captures, the RAM image, a tiny QMP client.

(Kept out of conftest.py and under a unique module name: test directories have no
``__init__.py``, so module basenames must be unique across the whole test tree.)
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SHARED = Path(__file__).parents[2].parent / "shared"
REFERENCE = SHARED / "reference"
CAPTURES = REFERENCE / "captures"
IMAGE_SHA256 = "90da160d9f6f2b80ef74a3a3dcd2bca12ee56e83b8a56bc9bd052ffcedea1d7b"
RAM_SIZE = 4 << 20


def need_shared() -> None:
    if not (CAPTURES / "mfd2-none-4m").is_dir() or not (REFERENCE / "make_image.py").is_file():
        pytest.skip(f"reference captures not found at {SHARED} (the ../shared checkout)")


def load_capture(name: str) -> dict[str, bytes]:
    """``{"main": ..., "conn1": ..., "conn2": ...}`` source-to-destination bytes."""
    need_shared()
    directory = CAPTURES / name
    out = {"main": (directory / "conn0-main.bin").read_bytes()}
    for path in sorted(directory.glob("conn*-mfd.bin")):
        out[path.name.split("-")[0]] = path.read_bytes()
    return out


QEMU = shutil.which("qemu-system-x86_64")
QEMU_RAM_SIZE = 4 << 20
DEADLINE_S = 20.0
PAGE_SIZE = 4096


def make_image() -> bytes:
    rng = random.Random(7)
    pages = []
    for index in range(QEMU_RAM_SIZE // PAGE_SIZE):
        kind = (index // 5) % 4
        if kind in (0, 3) and index % 7:
            pages.append(bytes(PAGE_SIZE))
        elif kind == 1:
            pages.append(rng.randbytes(PAGE_SIZE))
        else:
            pages.append((f"page {index} of the migemu image ".encode() * 200)[:PAGE_SIZE])
    return b"".join(pages)


class QMP:
    """A minimal synchronous QMP client (the test must not depend on other layers)."""

    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.file = self.sock.makefile("rwb")
        self._read()
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            message = json.loads(self.file.readline())
            if "event" not in message:
                return message

    def cmd(self, name: str, **arguments: object) -> object:
        self.file.write(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        assert "error" not in reply, reply
        return reply["return"]


def wait_status(qmp: QMP, *wanted: str) -> str | None:
    """Poll the destination's query-migrate until its status is one of ``wanted``."""
    deadline = time.monotonic() + DEADLINE_S
    status = None
    while time.monotonic() < deadline:
        status = qmp.cmd("query-migrate").get("status")  # type: ignore[union-attr]
        if status in wanted:
            break
        time.sleep(0.01)
    return status


def start_qemu(
    ram: Path, qmp_path: Path, *, incoming: bool = True, share: bool = True
) -> subprocess.Popen[bytes]:
    """Real QEMU 7.2, ``-machine none`` with ``ram`` as its 4 MiB memory-backend-file and a
    QMP socket; ``-incoming defer`` for a destination. Output is one pipe (stdout)."""
    assert QEMU is not None
    backend = f"memory-backend-file,id=mem0,size=4M,mem-path={ram},share={'on' if share else 'off'}"
    return subprocess.Popen(
        [
            QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-m", "4M",
            "-object", backend,
            "-machine", "memory-backend=mem0", "-qmp", f"unix:{qmp_path},server=on,wait=off",
            *(["-incoming", "defer"] if incoming else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
