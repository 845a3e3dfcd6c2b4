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
