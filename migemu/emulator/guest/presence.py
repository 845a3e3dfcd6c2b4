"""Which guest pages a postcopy destination has (emulator layer).

QEMU's destination registers guest RAM with userfaultfd at POSTCOPY_LISTEN: a page the
source told it to discard is a hole, and a vCPU that touches one blocks in the kernel while
the fault thread asks the source for it (REQ_PAGES on the return path); the page arrives
(UFFDIO_COPY) and the vCPU goes on. ``PagePresence`` is that for emulated RAM: one "present"
bit per page (QEMU's ``receivedmap``), cleared by ``discard``, set by ``place``; a workload
asks ``wait_present`` before it touches pages, which requests the first missing page once
(through ``requester``) and blocks until it is there, or returns 0 if the caller must give
up (the vCPU is being paused or stopped). Thread-safe; no IO of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from migemu.emulator.ram import PAGE_SIZE, RAMBlock

Requester = Callable[[str, int], None]  # (block name, page index): ask the source
WAIT_SLICE_S = 0.05


class PagePresence:
    """Per-block present/requested page bits and the waiters on them."""

    def __init__(self, blocks: Iterable[RAMBlock], requester: Requester | None = None) -> None:
        self._present: dict[str, npt.NDArray[np.bool_]] = {
            b.name: np.ones(b.pages, dtype=np.bool_) for b in blocks
        }
        self._requested = {
            name: np.zeros(len(p), dtype=np.bool_) for name, p in self._present.items()
        }
        self._cond = threading.Condition()
        self.requester = requester
        self.blocked_ns = 0  # total time vCPUs spent waiting for pages (postcopy-blocktime)
        self.requests = 0

    def pages(self, block: str) -> int:
        return len(self._present[block])

    def discard(self, block: str, first: int, n: int) -> None:
        """POSTCOPY_RAM_DISCARD: pages [first, first+n) are stale; the source resends them."""
        with self._cond:
            self._present[block][first : first + n] = False
            self._requested[block][first : first + n] = False

    def is_present(self, block: str, page: int) -> bool:
        return bool(self._present[block][page])

    def missing(self, block: str) -> int:
        with self._cond:
            return int(np.count_nonzero(~self._present[block]))

    def claim(self, block: str, page: int) -> bool:
        """Whether a page that arrived may be written: only when it is still missing (a
        page the guest may already have changed is never overwritten)."""
        return not self._present[block][page]

    def fill(self, block: str, page: int, write: Callable[[], None]) -> bool:
        """If ``page`` is missing: ``write()`` it and mark it present, atomically (two
        channels may bring the same page; the second must not overwrite what the guest
        wrote after the first). Returns whether it wrote."""
        with self._cond:
            if self._present[block][page]:
                return False
            write()
            self._present[block][page] = True
            self._cond.notify_all()
            return True

    def place(self, block: str, first: int, n: int = 1) -> None:
        """Pages [first, first+n) were written: present from now on; wake waiters."""
        with self._cond:
            self._present[block][first : first + n] = True
            self._cond.notify_all()

    def fill_all(self) -> None:
        """Every page is there (the migration completed): nobody waits any more."""
        with self._cond:
            for bits in self._present.values():
                bits[:] = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Make waiters look at their give-up condition now."""
        with self._cond:
            self._cond.notify_all()

    def forget_requests(self) -> None:
        """After a recovery the source forgot what was asked: ask again."""
        with self._cond:
            for bits in self._requested.values():
                bits[:] = False
            self._cond.notify_all()

    def received_bitmap(self, block: str) -> bytes:
        """The block's present bits as QEMU's little-endian ``receivedmap`` (RECV_BITMAP),
        padded to 8 bytes."""
        with self._cond:
            raw = np.packbits(self._present[block], bitorder="little").tobytes()
        return raw + bytes(-len(raw) % 8)

    def wait_present(self, block: str, first: int, n: int, give_up: Callable[[], bool]) -> int:
        """How many pages from ``first`` on (at most ``n``) are present, after waiting for
        ``first`` itself if it is missing (asking the source for it once). 0 when
        ``give_up()`` turned true while waiting."""
        present = self._present[block]
        with self._cond:
            if not present[first]:
                start = time.monotonic_ns()
                while not present[first]:
                    if give_up():
                        self.blocked_ns += time.monotonic_ns() - start
                        return 0
                    requested = self._requested[block]
                    requester = self.requester
                    if not requested[first] and requester is not None:
                        requested[first] = True
                        self.requests += 1
                        self._cond.release()
                        try:
                            requester(block, first)
                        finally:
                            self._cond.acquire()
                        continue
                    self._cond.wait(WAIT_SLICE_S)
                self.blocked_ns += time.monotonic_ns() - start
            window = present[first : first + n]
            missing = np.flatnonzero(~window)
            return int(missing[0]) if len(missing) else len(window)


def page_of(offset: int) -> int:
    return offset // PAGE_SIZE
