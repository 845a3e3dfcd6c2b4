"""Deflate backends of the zlib method: same stream format, stock inflate reads them."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from migemu.multifd.methods import ZlibRecv, ZlibSend
from migemu.multifd.methods.deflate import BACKENDS, DeflateBackendError, load, selected

PAGE = 4096


def pages(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [(rng.randbytes(rng.randrange(1, 200)) * 64)[:PAGE].ljust(PAGE, b"\0") for _ in range(n)]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_streams_what_stock_zlib_inflates(backend: str) -> None:
    try:
        load(backend)
    except DeflateBackendError as err:
        pytest.skip(str(err))
    send = ZlibSend(0, level=1, backend=backend)
    recv = ZlibRecv(0)  # the receiver always inflates with stock zlib
    for seed in range(6):  # one stream across packets, each closed by a sync flush
        batch = pages(seed, 1 + seed * 20)
        payload = send.compress(batch)
        assert payload.endswith(b"\x00\x00\xff\xff")
        assert recv.decompress(payload, len(batch)) == b"".join(batch)


def test_selection_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("MIGEMU_DEFLATE", raising=False)
    assert selected() == "zlib" and ZlibSend(0).backend == "zlib"
    monkeypatch.setenv("MIGEMU_DEFLATE", "zlib-ng")
    assert selected() == "zlib-ng"
    monkeypatch.setenv("MIGEMU_DEFLATE", "lzo")
    with pytest.raises(DeflateBackendError, match="unknown deflate backend"):
        ZlibSend(0)


def test_an_unknown_backend_stops_migemu_at_start_up() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "migemu", "-machine", "none", "-display", "none"],
        env={"MIGEMU_DEFLATE": "lzo", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "MIGEMU_DEFLATE=lzo: unknown deflate backend" in proc.stderr
