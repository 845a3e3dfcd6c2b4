"""Zero-page detection over whole page runs (emulator layer, used by the migration sender).

QEMU sends an all-zero page as a flag instead of 4 KiB of data (``buffer_is_zero``). Asking
that question once per page from Python costs ~5 µs a page (1.38 s per GiB); here a run of
pages is viewed as a ``(pages, 512)`` uint64 array and reduced per row by numpy, a chunk at a
time, so the cost is one read of the memory plus a few Python steps per chunk. Every byte of
a page is looked at: a page whose only non-zero byte is its last one is not zero.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt

PAGE_SIZE = 4096

# What a RAMBlock.view(), a page buffer or an mmap can be (collections.abc.Buffer is 3.12+).
Buffer = bytes | bytearray | memoryview | mmap.mmap
_WORDS_PER_PAGE = PAGE_SIZE // 8

# 1 MiB per numpy call: the reduction's rows then stay in L2 cache (measured 0.08 s per GiB
# against 0.11 s with 16 MiB chunks), and per-call overhead is still negligible.
ZERO_SCAN_CHUNK_PAGES = 256


def _words(buf: Buffer, first_page: int, n: int) -> npt.NDArray[np.uint64]:
    mv = memoryview(buf).cast("B")
    if first_page < 0 or n < 0 or (first_page + n) * PAGE_SIZE > mv.nbytes:
        raise IndexError(
            f"pages [{first_page}, {first_page + n}) outside a buffer of {mv.nbytes} bytes"
        )
    return np.frombuffer(
        mv, dtype=np.uint64, count=n * _WORDS_PER_PAGE, offset=first_page * PAGE_SIZE
    ).reshape(n, _WORDS_PER_PAGE)


def nonzero_pages(buf: Buffer, first_page: int = 0, n: int | None = None) -> npt.NDArray[np.bool_]:
    """One bool per page of ``[first_page, first_page + n)``: True if any byte is non-zero."""
    if n is None:
        n = memoryview(buf).nbytes // PAGE_SIZE - first_page
    words = _words(buf, first_page, n)
    out = np.empty(n, dtype=np.bool_)
    for lo in range(0, n, ZERO_SCAN_CHUNK_PAGES):
        chunk = words[lo : lo + ZERO_SCAN_CHUNK_PAGES]
        # max(axis=1) is several times faster than any(axis=1) on integer rows.
        np.not_equal(chunk.max(axis=1), 0, out=out[lo : lo + len(chunk)])
    return out


def zero_pages(buf: Buffer, first_page: int = 0, n: int | None = None) -> npt.NDArray[np.bool_]:
    """One bool per page: True if the page is all zero."""
    return ~nonzero_pages(buf, first_page, n)


def is_zero_range(buf: Buffer, first_page: int, n: int) -> bool:
    """True if every byte of the ``n`` pages is zero (one contiguous reduction)."""
    if n == 0:
        return True
    return not bool(_words(buf, first_page, n).any())


def split_zero_runs(buf: Buffer, first_page: int, n: int) -> Iterator[tuple[int, int, bool]]:
    """Split a page run into maximal sub-runs ``(first_page, n_pages, is_zero)``.

    Consecutive sub-runs alternate between zero and non-zero; together they cover the run.
    """
    if n == 0:
        return
    mask = nonzero_pages(buf, first_page, n)
    cuts = (np.flatnonzero(mask[1:] != mask[:-1]) + 1).tolist()
    bounds = [0, *cuts, n]
    is_zero = not bool(mask[0])
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        yield first_page + lo, hi - lo, is_zero
        is_zero = not is_zero


class _Extents(Protocol):
    mem: mmap.mmap

    def data_extents(self, start: int, end: int) -> Iterator[tuple[int, int]]: ...


def page_runs(pages: npt.NDArray[np.int64]) -> Iterator[tuple[int, int]]:
    """``(first_page, end_page)`` of each run of consecutive page numbers, in order."""
    if len(pages) == 0:
        return
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = pages[np.concatenate(([0], breaks))].tolist()
    ends = (pages[np.concatenate((breaks - 1, [len(pages) - 1]))] + 1).tolist()
    yield from zip(starts, ends, strict=True)


def clear_nonzero_pages(block: _Extents, pages: npt.NDArray[np.int64]) -> int:
    """Zero each of ``pages`` (page numbers of ``block``) that is not zero already.

    This is a ZERO record on the destination: QEMU writes zeros only where the page is not
    zero, so untouched memory stays untouched. Runs of consecutive pages are checked with
    one reduction each over the mapping itself (no gathered copy), and only where the block
    may hold data: a hole of a shared backing file is zero and is not read at all. Returns
    how many pages were written.
    """
    written = 0
    words = _words(block.mem, 0, len(block.mem) // PAGE_SIZE)
    try:
        for first, end in page_runs(pages):
            for lo, hi in block.data_extents(first * PAGE_SIZE, end * PAGE_SIZE):
                p0, p1 = lo // PAGE_SIZE, hi // PAGE_SIZE
                dirty = np.flatnonzero(nonzero_pages(block.mem, p0, p1 - p0))
                if len(dirty):
                    words[dirty + p0] = 0
                    written += len(dirty)
    finally:
        del words  # release the buffer export: the mmap must stay closable
    return written
