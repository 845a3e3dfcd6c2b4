"""Zero-page detection over runs, against a naive per-page reference."""

from __future__ import annotations

import mmap
import random

import pytest

from migemu.emulator.guest.zero import (
    PAGE_SIZE,
    is_zero_range,
    nonzero_pages,
    split_zero_runs,
    zero_pages,
)


def random_mix(rng: random.Random, n: int) -> bytearray:
    buf = bytearray(n * PAGE_SIZE)
    for i in range(n):
        base = i * PAGE_SIZE
        kind = rng.choice(["zero", "zero", "last", "first", "middle", "full"])
        if kind == "last":
            buf[base + PAGE_SIZE - 1] = rng.randrange(1, 256)
        elif kind == "first":
            buf[base] = rng.randrange(1, 256)
        elif kind == "middle":
            buf[base + rng.randrange(PAGE_SIZE)] = rng.randrange(1, 256)
        elif kind == "full":
            buf[base : base + PAGE_SIZE] = rng.randbytes(PAGE_SIZE)
    return buf


def naive(buf: bytes | bytearray, first: int, n: int) -> list[bool]:
    z = bytes(PAGE_SIZE)
    return [buf[(first + i) * PAGE_SIZE : (first + i + 1) * PAGE_SIZE] == z for i in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_matches_naive_reference(seed):
    rng = random.Random(seed)
    n = rng.randrange(1, 200)
    buf = random_mix(rng, n)
    first = rng.randrange(n)
    count = rng.randrange(n - first + 1)
    assert zero_pages(buf, first, count).tolist() == naive(buf, first, count)
    assert nonzero_pages(buf, first, count).tolist() == [not z for z in naive(buf, first, count)]
    assert is_zero_range(buf, first, count) == all(naive(buf, first, count))


@pytest.mark.parametrize("seed", range(20))
def test_split_covers_and_alternates(seed):
    rng = random.Random(100 + seed)
    n = rng.randrange(1, 150)
    buf = random_mix(rng, n)
    first = rng.randrange(n)
    count = n - first
    runs = list(split_zero_runs(memoryview(buf), first, count))
    ref = naive(buf, first, count)
    page = first
    for i, (p, k, is_zero) in enumerate(runs):
        assert p == page and k > 0
        assert ref[p - first : p - first + k] == [is_zero] * k
        if i:
            assert is_zero != runs[i - 1][2]
        page += k
    assert page == first + count


def test_last_byte_only_page_is_not_zero():
    buf = bytearray(3 * PAGE_SIZE)
    buf[2 * PAGE_SIZE - 1] = 1
    assert zero_pages(buf).tolist() == [True, False, True]


def test_mmap_view_and_bounds():
    with mmap.mmap(-1, 16 * PAGE_SIZE) as mem:
        mem[5 * PAGE_SIZE + 100] = 7
        view = memoryview(mem)
        assert list(split_zero_runs(view, 0, 16)) == [(0, 5, True), (5, 1, False), (6, 10, True)]
        assert is_zero_range(view, 6, 10) and is_zero_range(view, 0, 0)
        with pytest.raises(IndexError):
            zero_pages(view, 10, 7)
        del view
    assert list(split_zero_runs(b"", 0, 0)) == []


def _block(tmp_path, pages: int, shared: bool):
    from migemu.emulator.ram import map_file

    return map_file("mem0", str(tmp_path / "ram"), pages * PAGE_SIZE, share=shared)


@pytest.mark.parametrize("shared", [True, False])
def test_clear_nonzero_pages_zeroes_only_what_is_not_zero(tmp_path, shared):
    """ZERO records on the destination: the listed pages end up zero, every other page keeps
    its bytes, and pages that are zero already (holes or written zeros) are not written."""
    import numpy as np

    from migemu.emulator.guest.zero import clear_nonzero_pages

    block = _block(tmp_path, 64, shared)
    try:
        rng = random.Random(5)
        for p in rng.sample(range(64), 30):
            block.mem[p * PAGE_SIZE + rng.randrange(PAGE_SIZE)] = rng.randrange(1, 256)
        before = bytes(block.mem)
        targets = sorted(rng.sample(range(64), 25)) + [3, 4, 5, 63]  # runs, repeats, unsorted
        nonzero_before = {
            p for p in set(targets) if any(before[p * PAGE_SIZE : (p + 1) * PAGE_SIZE])
        }
        written = clear_nonzero_pages(block, np.asarray(targets, dtype=np.int64))
        after = bytes(block.mem)
        for p in range(64):
            page = after[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
            if p in targets:
                assert page == bytes(PAGE_SIZE)
            else:
                assert page == before[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
        assert written == len(nonzero_before)
    finally:
        block.close()


def test_data_extents_skip_holes_of_a_shared_file(tmp_path):
    block = _block(tmp_path, 256, shared=True)
    try:
        assert list(block.data_extents(0, 256 * PAGE_SIZE)) in ([], [(0, 256 * PAGE_SIZE)])
        block.mem[10 * PAGE_SIZE + 5] = 1
        block.mem[200 * PAGE_SIZE] = 1
        extents = list(block.data_extents(0, 256 * PAGE_SIZE))
        covered = {p for lo, hi in extents for p in range(lo // PAGE_SIZE, hi // PAGE_SIZE)}
        assert {10, 200} <= covered  # never claims a written page is a hole
        assert all(lo % PAGE_SIZE == 0 and hi % PAGE_SIZE == 0 for lo, hi in extents)
        assert list(block.data_extents(11 * PAGE_SIZE, 12 * PAGE_SIZE)) in (
            [],
            [(11 * PAGE_SIZE, 12 * PAGE_SIZE)],
        )
    finally:
        block.close()
    assert block.fd is None
