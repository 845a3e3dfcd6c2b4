"""Dirty-page logging for one RAM block: QEMU's migration dirty bitmap (emulator layer).

One byte per 4 KiB page (16 MiB for a 64 GiB block) in a numpy array. Writers (the emulated
vCPU) ``mark`` pages; the migration ``sync_and_clear``s, which swaps in a fresh log under the
lock and hands back the old one as a ``DirtySnapshot``: every mark lands either in the snapshot
or in the new log, never in neither. Scans (``count``, ``runs``) work on whole chunks with
numpy, never page by page, so a full 64 GiB scan is a few milliseconds per chunk of 1 Mi pages.
``DirtyRateMeter`` turns successive syncs into QEMU's ``dirty-pages-rate``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt

# Runs are found one chunk at a time so the temporaries stay small (1 MiB each) however big
# the block is; a run crossing a chunk boundary is stitched back together.
SCAN_CHUNK_PAGES = 1 << 20

BoolArray = npt.NDArray[np.bool_]


class MonotonicClock(Protocol):
    def monotonic(self) -> float: ...


def mask_runs(mask: BoolArray, base: int = 0) -> Iterator[tuple[int, int]]:
    """Yield ``(first, n)`` for each run of True in ``mask``, offset by ``base``.

    Work is proportional to the mask's size at memory speed plus one Python step per run.
    """
    pending: tuple[int, int] | None = None  # last run seen, held back in case it continues
    for lo in range(0, len(mask), SCAN_CHUNK_PAGES):
        chunk = mask[lo : lo + SCAN_CHUNK_PAGES]
        if not chunk.any():
            continue
        # Edges of True runs: positions where the value differs from its left neighbour.
        padded = np.zeros(len(chunk) + 2, dtype=np.bool_)
        padded[1:-1] = chunk
        edges = (np.flatnonzero(padded[1:] != padded[:-1]) + (base + lo)).tolist()
        for s, e in zip(edges[0::2], edges[1::2], strict=True):
            if pending is not None and pending[1] == s:
                pending = (pending[0], e)  # a run crossing the chunk boundary
                continue
            if pending is not None:
                yield pending[0], pending[1] - pending[0]
            pending = (s, e)
    if pending is not None:
        yield pending[0], pending[1] - pending[0]


class DirtySnapshot:
    """The pages dirtied during one logging period; immutable once returned by a sync."""

    __slots__ = ("_bits",)

    def __init__(self, bits: npt.NDArray[np.uint8]) -> None:
        self._bits = bits

    @property
    def pages(self) -> int:
        return len(self._bits)

    @property
    def mask(self) -> BoolArray:
        """A read-only boolean view, one entry per page."""
        view = self._bits.view(np.bool_)
        view.flags.writeable = False
        return view

    def count(self) -> int:
        return int(np.count_nonzero(self._bits.view(np.bool_)))

    def __contains__(self, page: int) -> bool:
        return bool(self._bits[page])

    def run_arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(firsts, lengths)`` of all dirty runs as arrays, for callers that batch them."""
        padded = np.zeros(self.pages + 2, dtype=np.bool_)
        padded[1:-1] = self._bits.view(np.bool_)
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        return edges[0::2], edges[1::2] - edges[0::2]

    def runs(self, first_page: int = 0, n: int | None = None) -> Iterator[tuple[int, int]]:
        """``(first_page, n_pages)`` of each dirty run inside ``[first_page, first_page+n)``."""
        stop = self.pages if n is None else min(self.pages, first_page + n)
        return mask_runs(self._bits[first_page:stop].view(np.bool_), first_page)


class DirtyRateMeter:
    """QEMU's ``dirty-pages-rate``: pages dirtied per second, updated once a period of at
    least ``period_s`` has passed since the last update (migration_bitmap_sync_precopy)."""

    def __init__(self, clock: MonotonicClock, period_s: float = 1.0) -> None:
        self._clock = clock
        self._period_s = period_s
        self._lock = threading.Lock()
        self._start = clock.monotonic()
        self._pages = 0
        self.rate = 0  # pages/s, as query-migrate's ram.dirty-pages-rate

    def add(self, pages: int) -> None:
        with self._lock:
            self._pages += pages
            now = self._clock.monotonic()
            elapsed = now - self._start
            if elapsed >= self._period_s:
                self.rate = int(self._pages / elapsed)
                self._pages = 0
                self._start = now


class DirtyBitmap:
    """Dirty log of one RAM block, one flag per page. All methods are thread-safe.

    Guarantee: a ``mark`` that returned before ``sync_and_clear`` started is in that
    snapshot; one that started after it returned is in the next; a concurrent one is in
    exactly one of the two (the lock orders them). Marking an already dirty page is a no-op.
    """

    def __init__(
        self,
        pages: int,
        *,
        on_sync: Callable[[int], None] | None = None,
    ) -> None:
        if pages < 0:
            raise ValueError(f"negative page count {pages}")
        self.pages = pages
        self._lock = threading.Lock()
        # np.zeros of a big array is calloc'd: untouched parts cost no memory.
        self._bits = np.zeros(pages, dtype=np.uint8)
        self._on_sync = on_sync
        self.sync_count = 0

    def mark(self, first_page: int, n: int = 1) -> None:
        if first_page < 0 or n < 0 or first_page + n > self.pages:
            raise IndexError(f"pages [{first_page}, {first_page + n}) outside 0..{self.pages}")
        with self._lock:
            self._bits[first_page : first_page + n] = 1

    def mark_pages(self, pages: npt.ArrayLike) -> None:
        """Mark a scattered set of page numbers in one locked step."""
        idx = np.asarray(pages, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.pages):
            raise IndexError(f"page number outside 0..{self.pages}")
        with self._lock:
            self._bits[idx] = 1

    def mark_all(self) -> None:
        """As at the start of migration: every page must be sent once."""
        with self._lock:
            self._bits.fill(1)

    def count(self) -> int:
        """Pages dirty in the current (not yet synced) period."""
        with self._lock:
            return int(np.count_nonzero(self._bits.view(np.bool_)))

    def is_dirty(self, page: int) -> bool:
        with self._lock:
            return bool(self._bits[page])

    def sync_and_clear(self) -> DirtySnapshot:
        """Return the pages dirtied since the last sync and start a new, empty log."""
        fresh = np.zeros(self.pages, dtype=np.uint8)
        with self._lock:
            snapshot, self._bits = self._bits, fresh
            self.sync_count += 1
        snap = DirtySnapshot(snapshot)
        if self._on_sync is not None:
            self._on_sync(snap.count())
        return snap

    def runs(self, snapshot: DirtySnapshot) -> Iterator[tuple[int, int]]:
        """``(first_page, n_pages)`` for each run of dirty pages in ``snapshot``."""
        if snapshot.pages != self.pages:
            raise ValueError("snapshot is from a bitmap of another size")
        return snapshot.runs()
