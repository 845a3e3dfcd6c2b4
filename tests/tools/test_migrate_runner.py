"""The runner's pure parts: RAM comparison (it must be able to fail), sizes, spec checks."""

from __future__ import annotations

import pytest

from migemu.tools.migrate_runner import (
    RunnerError,
    RunResult,
    RunSpec,
    compare_ram,
    parse_size,
)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_equal_files_verify(tmp_path):
    data = bytes(range(256)) * 40_000
    assert compare_ram(write(tmp_path / "a", data), write(tmp_path / "b", data)) is None


@pytest.mark.parametrize("offset", [0, 4095, 4096, 9_000_000, 10_239_999])
def test_one_flipped_byte_is_found(tmp_path, offset):
    data = bytearray(10_240_000)
    a = write(tmp_path / "a", bytes(data))
    data[offset] ^= 0x5A
    b = write(tmp_path / "b", bytes(data))
    mismatch = compare_ram(a, b)
    assert mismatch is not None
    assert mismatch.offset == offset and mismatch.page == offset // 4096
    assert str(mismatch) == f"content differs at byte {offset} (page {offset // 4096})"


def test_size_difference_is_a_mismatch(tmp_path):
    a = write(tmp_path / "a", bytes(8192))
    b = write(tmp_path / "b", bytes(4096))
    mismatch = compare_ram(a, b)
    assert mismatch is not None and mismatch.offset == 4096 and "sizes differ" in mismatch.reason


def test_unverified_run_is_not_ok():
    spec = RunSpec(size=1 << 20)
    assert RunResult(spec, "completed", verified=True).ok
    bad = RunResult(spec, "completed", verified=False, mismatch="content differs at byte 0")
    assert not bad.ok and bad.as_dict()["verified"] is False


@pytest.mark.parametrize(
    ("text", "size"), [("16M", 16 << 20), ("1G", 1 << 30), ("256", 256 << 20), ("64MiB", 64 << 20)]
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 1000}, "whole number of MiB"),
        ({"method": "lz4"}, "unknown method"),
        ({"method": "none", "level": 3}, "needs method zlib or zstd"),
        ({"method": "zlib", "level": 10}, "between 0 and 9"),
        ({"channels": 0}, "between 1 and 255"),
        ({"image": "nope"}, "unknown image kind"),
        ({"engine": "qemu", "dirty_rate": 100}, "runs no guest"),
    ],
)
def test_bad_specs(kwargs, message):
    with pytest.raises(RunnerError, match=message):
        RunSpec(**({"size": 1 << 20} | kwargs))
