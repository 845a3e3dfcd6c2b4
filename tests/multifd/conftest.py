"""Fixtures for the multifd tests."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from multifd_support import IMAGE_SHA256, REFERENCE, need_shared


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
