"""Migration counters and the numbers derived from them, as QEMU 7.2 computes them (emulator).

``MigrationStats`` is the source side's ``ram_counters`` plus the time-derived members of
``MigrationState`` (mbps, pages-per-second, expected-downtime, setup-time, total-time,
downtime). Channel threads add to the counters under a lock; the migration loop calls the
lifecycle methods at the points QEMU does; ``snapshot()`` freezes everything for
``query-migrate``. Time comes from an injected clock of integer nanoseconds (like
``time.monotonic_ns``), read as whole milliseconds the way ``qemu_clock_get_ms`` does, so
tests need no sleeps and no float rounding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

ClockNs = Callable[[], int]

TARGET_PAGE_SIZE = 4096  # x86 qemu_target_page_size()
BUFFER_DELAY_MS = 100  # migration.c: the mbps / pages-per-second window
DIRTY_RATE_PERIOD_MS = 1000  # ram.c: dirty-pages-rate is recomputed at most once a second
EXPECTED_DOWNTIME_MIN_BYTES = 10000  # "if we haven't sent anything, we don't recalculate"


@dataclass(frozen=True)
class StatsSnapshot:
    """Everything ``query-migrate`` and our own tools read, frozen at one instant."""

    # MigrationStats (facts §4.5); ``skipped`` is always 0, ``normal-bytes`` derived
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    duplicate: int = 0
    normal: int = 0
    dirty_pages_rate: int = 0
    mbps: float = 0.0
    dirty_sync_count: int = 0
    postcopy_requests: int = 0
    page_size: int = TARGET_PAGE_SIZE
    multifd_bytes: int = 0
    pages_per_second: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    postcopy_bytes: int = 0
    dirty_sync_missed_zero_copy: int = 0
    # MigrationInfo times, ms
    setup_time: int = 0
    elapsed_time: int = 0  # now - start: what total-time shows before completion
    total_time: int = 0  # stored by complete(): what total-time shows once completed
    expected_downtime: int = 0
    downtime: int = 0
    # not in QMP: honest byte counts for our own tools
    main_stream_bytes: int = 0  # everything written on the main channel
    multifd_wire_bytes: int = 0  # what the multifd channels really wrote (compressed)

    @property
    def skipped(self) -> int:
        return 0  # "legacy value. It is not used anymore"

    @property
    def normal_bytes(self) -> int:
        return self.normal * self.page_size


class MigrationStats:
    """The source's counters and QEMU 7.2's formulas over them; thread-safe."""

    def __init__(
        self, clock_ns: ClockNs = time.monotonic_ns, page_size: int = TARGET_PAGE_SIZE
    ) -> None:
        self._clock_ns = clock_ns
        self._page_size = page_size
        self._lock = threading.Lock()
        self._reset(ram_total=0)

    def _now_ms(self) -> int:
        return self._clock_ns() // 1_000_000

    def _reset(self, ram_total: int) -> None:
        # counters (ram_counters / ram_atomic_counters)
        self._total = ram_total
        self._transferred = 0
        self._remaining = 0
        self._duplicate = 0
        self._normal = 0
        self._dirty_pages_rate = 0
        self._dirty_sync_count = 0
        self._postcopy_requests = 0
        self._multifd_bytes = 0
        self._precopy_bytes = 0
        self._downtime_bytes = 0
        self._postcopy_bytes = 0
        self._dirty_sync_missed_zero_copy = 0
        self._in_postcopy = False
        self._main_stream_bytes = 0
        self._multifd_wire_bytes = 0
        # MigrationState timing and rates
        self._start_ms = 0
        self._setup_start_ms = 0
        self._setup_time = 0
        self._total_time = 0
        self._downtime_start_ms = 0
        self._downtime = 0
        self._expected_downtime = 0
        self._mbps = 0.0
        self._pages_per_second = 0.0
        self._threshold_size = 0
        self._iteration_start_ms = 0
        self._iteration_initial_bytes = 0
        self._iteration_initial_pages = 0
        # RAMState's dirty-rate period
        self._time_last_bitmap_sync_ms = 0
        self._num_dirty_pages_period = 0

    # -- derived inputs, lock held ---------------------------------------------------------

    def _total_bytes(self) -> int:
        # migration_total_bytes(): the main QEMUFile's total plus multifd-bytes. Both the
        # window rate and the completion mbps use it, not `transferred` (REC: the final mbps
        # of d_multifd_zstd implies ~870 bytes more than `transferred`: device state).
        return self._main_stream_bytes + self._multifd_bytes

    def _total_pages(self) -> int:
        # ram_get_total_transferred_pages(): normal + duplicate (+ xbzrle pages: none here)
        return self._normal + self._duplicate

    def _start_iteration(self, now_ms: int) -> None:
        # update_iteration_initial_status()
        self._iteration_start_ms = now_ms
        self._iteration_initial_bytes = self._total_bytes()
        self._iteration_initial_pages = self._total_pages()

    # -- lifecycle, called by the migration loop at QEMU's points -------------------------

    def start(self, ram_total: int) -> None:
        """``migrate`` (migrate_init): every counter and time back to zero, start time now.
        ``ram_total`` is ram_bytes_total(), the ``total`` member."""
        with self._lock:
            self._reset(ram_total)
            self._start_ms = self._now_ms()

    def begin_setup(self, downtime_limit_ms: int) -> None:
        """The connection is up and the migration thread starts (migrate_fd_connect +
        migration_thread): expected-downtime starts as downtime-limit, the setup clock and
        the first rate window start now."""
        with self._lock:
            now = self._now_ms()
            self._expected_downtime = downtime_limit_ms
            self._setup_start_ms = now
            self._start_iteration(now)

    def end_setup(self) -> None:
        """Setup is done (just before setup -> active): setup-time = now - setup start."""
        with self._lock:
            self._setup_time = self._now_ms() - self._setup_start_ms

    def update(self, downtime_limit_ms: int) -> bool:
        """migration_update_counters(), called from the migration loop as often as it likes;
        recomputes only when a BUFFER_DELAY_MS window has passed. Returns whether it did.

        Over the window (facts §4.4):
          bandwidth   = bytes / ms
          threshold   = bandwidth * downtime-limit (bytes that fit in the allowed downtime)
          mbps        = bytes * 8 / (ms / 1000) / 1000 / 1000, QEMU's float operation order
                        (REC values like 1095.4230400000001 come out bit-identical)
          pages/s     = (normal + duplicate delta) / (ms / 1000), truncated when shown
          expected-downtime = remaining / bandwidth, only once dirty-pages-rate is nonzero
                        and the window moved more than 10000 bytes; until then it keeps
                        the downtime-limit begin_setup() put there.
        """
        with self._lock:
            now = self._now_ms()
            if now < self._iteration_start_ms + BUFFER_DELAY_MS:
                return False
            transferred = self._total_bytes() - self._iteration_initial_bytes
            time_spent = now - self._iteration_start_ms
            bandwidth = transferred / time_spent
            self._threshold_size = int(bandwidth * downtime_limit_ms)
            self._mbps = ((transferred * 8.0) / (time_spent / 1000.0)) / 1000.0 / 1000.0
            transferred_pages = self._total_pages() - self._iteration_initial_pages
            self._pages_per_second = transferred_pages / (time_spent / 1000.0)
            if self._dirty_pages_rate and transferred > EXPECTED_DOWNTIME_MIN_BYTES:
                self._expected_downtime = int(self._remaining / bandwidth)
            self._start_iteration(now)
            return True

    def vm_stopped(self) -> None:
        """migration_completion() stopped the VM for switchover: downtime starts now."""
        with self._lock:
            self._downtime_start_ms = self._now_ms()

    def complete(self) -> None:
        """migration_calculate_complete(), after the state became completed (facts §4.4):
          total-time = end - start
          downtime   = end - the vm_stopped() moment
          mbps       = total bytes * 8 / (total-time - setup-time) / 1000
        pages-per-second keeps its last window value, as in 7.2. Until this runs, a
        completed query-migrate shows total-time 0 and downtime 0 (REC's race)."""
        with self._lock:
            end = self._now_ms()
            self._total_time = end - self._start_ms
            if not self._downtime and not self._in_postcopy:  # postcopy: set at its start
                self._downtime = end - self._downtime_start_ms
            transfer_time = self._total_time - self._setup_time
            if transfer_time:
                self._mbps = (self._total_bytes() * 8.0) / transfer_time / 1000

    # -- counters, called from any thread ------------------------------------------------

    def add_zero_pages(self, pages: int = 1) -> None:
        """Zero pages found (``duplicate``); their bytes on the wire go to add_ram_bytes."""
        with self._lock:
            self._duplicate += pages

    def add_normal_pages(self, pages: int = 1) -> None:
        """Pages queued with their data (``normal``; ``normal-bytes`` = normal x page-size).
        7.2 counts a multifd page when it is put in the pending batch, before the batch is
        accounted in multifd-bytes, so ``normal`` may run up to a batch ahead (REC)."""
        with self._lock:
            self._normal += pages

    def add_ram_bytes(self, nbytes: int, *, vm_running: bool) -> None:
        """RAM bytes written on the main channel (ram_transferred_add): precopy-bytes while
        the VM runs, downtime-bytes once it is stopped (no postcopy here); also counted in
        ``transferred`` and in the main stream total."""
        with self._lock:
            if vm_running:
                self._precopy_bytes += nbytes
            elif self._in_postcopy:
                self._postcopy_bytes += nbytes
            else:
                self._downtime_bytes += nbytes
            self._transferred += nbytes
            self._main_stream_bytes += nbytes

    def add_main_stream_bytes(self, nbytes: int) -> None:
        """Non-RAM bytes on the main channel (headers, device sections): they count for
        mbps (migration_total_bytes) but not in any ``ram`` member."""
        with self._lock:
            self._main_stream_bytes += nbytes

    def add_multifd_packet(self, packet_len: int, pages: int) -> None:
        """A multifd packet queued (multifd_send_pages; pages=0 for a sync packet): 7.2
        counts the header plus the *uncompressed* page bytes in multifd-bytes and
        transferred, so with zlib/zstd it over-reports what the wire carries (facts §4.5)."""
        with self._lock:
            nbytes = pages * self._page_size + packet_len
            self._multifd_bytes += nbytes
            self._transferred += nbytes

    def add_multifd_wire_bytes(self, nbytes: int) -> None:
        """Bytes a multifd channel really wrote (compressed payload + headers); ours only."""
        with self._lock:
            self._multifd_wire_bytes += nbytes

    def set_remaining(self, nbytes: int) -> None:
        """ram_bytes_remaining(): dirty pages still to send x page size."""
        with self._lock:
            self._remaining = nbytes

    def bitmap_sync(self, new_dirty_pages: int) -> int:
        """migration_bitmap_sync(): one more dirty-sync pass that found ``new_dirty_pages``.
        Returns the new dirty-sync-count, which is MIGRATION_PASS's ``pass``.

        dirty-pages-rate = pages dirtied in the period x 1000 / period ms (integer), redone
        when more than DIRTY_RATE_PERIOD_MS passed since the period began; the first sync
        only starts the period."""
        with self._lock:
            self._dirty_sync_count += 1
            now = self._now_ms()
            if not self._time_last_bitmap_sync_ms:
                self._time_last_bitmap_sync_ms = now
            self._num_dirty_pages_period += new_dirty_pages
            if now > self._time_last_bitmap_sync_ms + DIRTY_RATE_PERIOD_MS:
                self._dirty_pages_rate = (
                    self._num_dirty_pages_period * 1000 // (now - self._time_last_bitmap_sync_ms)
                )
                self._time_last_bitmap_sync_ms = now
                self._num_dirty_pages_period = 0
            return self._dirty_sync_count

    def postcopy_started(self) -> None:
        """postcopy_start() sent the device state: downtime is fixed now (ms->downtime), and
        RAM bytes from here on are postcopy-bytes (the VM is stopped, in postcopy)."""
        with self._lock:
            self._in_postcopy = True
            self._downtime = self._now_ms() - self._downtime_start_ms

    def add_postcopy_request(self) -> None:
        """The destination asked for a page (ram_save_queue_pages)."""
        with self._lock:
            self._postcopy_requests += 1

    def add_dirty_sync_missed_zero_copy(self) -> None:
        with self._lock:
            self._dirty_sync_missed_zero_copy += 1

    # -- reading ---------------------------------------------------------------------------

    @property
    def threshold_size(self) -> int:
        """Bytes that can be sent within downtime-limit at the last window's bandwidth: the
        loop switches over once ``remaining`` is at most this (migration_iteration_run)."""
        return self._threshold_size

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                transferred=self._transferred,
                remaining=self._remaining,
                total=self._total,
                duplicate=self._duplicate,
                normal=self._normal,
                dirty_pages_rate=self._dirty_pages_rate,
                mbps=float(self._mbps),
                dirty_sync_count=self._dirty_sync_count,
                postcopy_requests=self._postcopy_requests,
                page_size=self._page_size,
                multifd_bytes=self._multifd_bytes,
                pages_per_second=int(self._pages_per_second),
                precopy_bytes=self._precopy_bytes,
                downtime_bytes=self._downtime_bytes,
                postcopy_bytes=self._postcopy_bytes,
                dirty_sync_missed_zero_copy=self._dirty_sync_missed_zero_copy,
                setup_time=self._setup_time,
                elapsed_time=self._now_ms() - self._start_ms,
                total_time=self._total_time,
                expected_downtime=self._expected_downtime,
                downtime=self._downtime,
                main_stream_bytes=self._main_stream_bytes,
                multifd_wire_bytes=self._multifd_wire_bytes,
            )
