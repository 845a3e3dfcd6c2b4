"""DirtyBitmap: marking, atomic sync, run scans, and no lost page under concurrency."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from migemu.emulator.guest import dirty
from migemu.emulator.guest.dirty import DirtyBitmap, DirtyRateMeter, mask_runs


def naive_runs(mask: list[bool], base: int = 0) -> list[tuple[int, int]]:
    out = []
    i = 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            out.append((base + i, j - i))
            i = j
        else:
            i += 1
    return out


def test_mark_count_sync():
    bm = DirtyBitmap(100)
    bm.mark(3, 4)
    bm.mark(5, 1)  # overlapping marks count once
    bm.mark(99)
    assert bm.count() == 5
    assert bm.is_dirty(6) and not bm.is_dirty(7)
    snap = bm.sync_and_clear()
    assert bm.count() == 0 and snap.count() == 5
    assert list(bm.runs(snap)) == [(3, 4), (99, 1)]
    assert 4 in snap and 7 not in snap
    assert bm.sync_count == 1
    assert bm.sync_and_clear().count() == 0


def test_mark_all_and_bounds():
    bm = DirtyBitmap(10)
    bm.mark_all()
    assert list(bm.sync_and_clear().runs()) == [(0, 10)]
    with pytest.raises(IndexError):
        bm.mark(8, 3)
    with pytest.raises(IndexError):
        bm.mark(-1)
    with pytest.raises(IndexError):
        bm.mark_pages([0, 10])
    bm.mark_pages(np.array([9, 0, 9]))
    assert list(bm.sync_and_clear().runs()) == [(0, 1), (9, 1)]


def test_snapshot_is_read_only_and_sized():
    bm = DirtyBitmap(8)
    snap = bm.sync_and_clear()
    with pytest.raises(ValueError):
        snap.mask[0] = True
    with pytest.raises(ValueError):
        DirtyBitmap(9).runs(snap)


def test_snapshot_subrange_runs():
    bm = DirtyBitmap(64)
    bm.mark(10, 20)
    snap = bm.sync_and_clear()
    assert list(snap.runs(15, 10)) == [(15, 10)]
    assert list(snap.runs(0, 12)) == [(10, 2)]
    assert list(snap.runs(40)) == []


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_runs_match_naive_across_chunk_boundaries(monkeypatch, chunk):
    monkeypatch.setattr(dirty, "SCAN_CHUNK_PAGES", chunk)
    rng = random.Random(chunk)
    for _ in range(200):
        n = rng.randrange(0, 80)
        density = rng.random()
        mask = [rng.random() < density for _ in range(n)]
        assert list(mask_runs(np.array(mask, dtype=np.bool_), 7)) == naive_runs(mask, 7)


def test_large_bitmap_scan():
    pages = 1 << 24  # a 64 GiB guest
    bm = DirtyBitmap(pages)
    bm.mark(0, 3)
    bm.mark((1 << 20) - 2, 5)  # crosses a scan chunk boundary
    bm.mark(pages - 1)
    snap = bm.sync_and_clear()
    assert list(snap.runs()) == [(0, 3), ((1 << 20) - 2, 5), (pages - 1, 1)]
    assert snap.count() == 9


def test_no_lost_mark_under_concurrent_writers_and_syncs():
    pages = 4096
    bm = DirtyBitmap(pages)
    writers = 4
    rounds = 3000
    seen = np.zeros(pages, dtype=np.bool_)
    done = threading.Event()
    expected = np.zeros(pages, dtype=np.bool_)
    plans = []
    for w in range(writers):
        rng = random.Random(w)
        plan = [(rng.randrange(pages), rng.randrange(1, 4)) for _ in range(rounds)]
        plan = [(p, min(n, pages - p)) for p, n in plan]
        for p, n in plan:
            expected[p : p + n] = True
        plans.append(plan)

    def writer(plan):
        for p, n in plan:
            bm.mark(p, n)

    threads = [threading.Thread(target=writer, args=(plan,)) for plan in plans]
    syncs = 0

    def syncer():
        nonlocal syncs
        while not done.is_set():
            seen[:] |= bm.sync_and_clear().mask
            syncs += 1

    s = threading.Thread(target=syncer)
    s.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    s.join()
    seen |= bm.sync_and_clear().mask  # the final sync (after the guest stopped)
    assert syncs > 0
    assert np.array_equal(seen, expected)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_dirty_rate_meter_updates_once_per_period():
    clock = FakeClock()
    meter = DirtyRateMeter(clock, period_s=1.0)
    bm = DirtyBitmap(1000, on_sync=meter.add)
    bm.mark(0, 300)
    clock.now = 0.5
    bm.sync_and_clear()
    assert meter.rate == 0  # period not over yet
    bm.mark(0, 100)
    clock.now = 2.0
    bm.sync_and_clear()
    assert meter.rate == 200  # 400 pages in 2 s


def test_run_arrays_match_runs():
    rng = random.Random(9)
    bm = DirtyBitmap(500)
    for _ in range(60):
        bm.mark(rng.randrange(490), rng.randrange(1, 10))
    bm.mark(499)
    bm.mark(0)
    snap = bm.sync_and_clear()
    firsts, lengths = snap.run_arrays()
    assert list(zip(firsts.tolist(), lengths.tolist(), strict=True)) == list(snap.runs())
