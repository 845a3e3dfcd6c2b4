"""Fixtures for the multifd tests: the shared reference captures and the RAM image."""

from __future__ import annotations

import hashlib
import subprocess
import sys
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


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The 4 MiB RAM image both captures migrated (regenerated, not stored)."""
    need_shared()
    out = tmp_path_factory.mktemp("image") / "img-4m-s2"
    subprocess.run(
        [
            sys.executable,
            str(REFERENCE / "make_image.py"),
            str(out),
            "4",
            "--seed",
            "2",
            "--mix",
            "zero=45,text=30,sparse=10,random=15",
        ],
        check=True,
        capture_output=True,
    )
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == IMAGE_SHA256
    return data


def load_capture(name: str) -> dict[str, bytes]:
    """``{"main": ..., "conn1": ..., "conn2": ...}`` source-to-destination bytes."""
    need_shared()
    directory = CAPTURES / name
    out = {"main": (directory / "conn0-main.bin").read_bytes()}
    for path in sorted(directory.glob("conn*-mfd.bin")):
        out[path.name.split("-")[0]] = path.read_bytes()
    return out
