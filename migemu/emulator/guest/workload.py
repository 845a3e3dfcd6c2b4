"""The emulated guest's vCPU: a thread that dirties guest RAM at a set rate (emulator layer).

A ``Workload`` owns one thread ("vCPU") that writes pages and marks them in the RAM blocks'
``DirtyBitmap``s, so a running migration has something to chase. The rate (pages/s) is kept by
an injected clock, so tests run on fake time. ``pause()`` is the vCPU stop of the migration's
switchover: when it returns, no page is written until ``resume()``.

Concurrency design: every batch of writes happens with the workload's lock held, and the
thread checks for a pause request under that same lock before each batch. ``pause()`` raises
the request and then takes the lock: once it has it, the batch in flight (if any) is over and
the next check will park the thread. Batches are small (``BATCH_MAX_PAGES``) so pause waits at
most a millisecond or two. The clock's ``sleep`` is called without the lock.

Two kinds: ``GuestWorkload`` (random pages with realistic content, optionally a hot set) and
``SweepWorkload`` (QEMU migration-test's guest, with migratable state). Specs such as
``dirty,rate=20000,seed=7,hot=64M`` are parsed by ``parse_workload_spec``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from migemu.emulator.guest.dirty import DirtyBitmap
from migemu.emulator.guest.image import DEFAULT_MIX, KINDS, ImageMix, ImageMixError, PageSource
from migemu.emulator.guest.presence import PagePresence
from migemu.emulator.ram import PAGE_SIZE, RAMBlock

log = logging.getLogger(__name__)

# Pages written per locked batch: bounds how long pause() can wait for the vCPU.
BATCH_MAX_PAGES = 256
# The sweep guest touches one byte per page: a batch of 1024 pages is about as quick as 256
# random pages, and numpy releases the GIL for the longer strided add.
SWEEP_BATCH_PAGES = 1024
# Random words drawn per page written: a whole page's worth, for random content.
MATERIAL_WORDS = PAGE_SIZE // 8
# The vCPU wakes up about this often when rate-limited, and writes what is due.
TICK_S = 0.002
# Longest single clock.sleep(), so stop() and set_rate() take effect promptly on a real clock.
MAX_SLEEP_S = 0.02
# If the vCPU falls behind its rate (a slow host), it forgives debt beyond this many seconds'
# worth of pages instead of bursting to catch up.
MAX_BACKLOG_S = 0.25


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class WorkloadError(Exception):
    """A workload cannot be set up on this machine (e.g. its range does not fit in RAM)."""


class WorkloadSpecError(ValueError):
    """A workload spec string is malformed; the message says what and where."""


# --- the thread and its controls ------------------------------------------------------------


class Workload(ABC):
    """Base of every guest workload: rate limiting, the vCPU thread, pause/resume/stop.

    Subclasses implement ``_write(n)``: write the next ``n`` pages of their deterministic
    sequence and mark them dirty. It is always called with ``self._cond`` held.
    ``rate`` is pages per second; 0 means idle, None means as fast as possible.
    All public methods are thread-safe.
    """

    batch_pages = BATCH_MAX_PAGES  # pages per locked batch at full speed

    def __init__(
        self, *, rate: int | None, clock: Clock | None = None, name: str = "vcpu0"
    ) -> None:
        _check_rate(rate)
        self._clock: Clock = clock or SystemClock()
        self._cond = threading.Condition(threading.Lock())
        self._rate = rate
        self._name = name
        self._thread: threading.Thread | None = None
        self._pause_requested = False
        self._stopping = False
        self._rebase = True
        self.pages_written = 0
        self.error: BaseException | None = None  # what killed the thread, if anything
        # A postcopy destination's missing pages (guest/presence.py): the vCPU waits for a
        # page before it touches it. None: every page is there.
        self.presence: PagePresence | None = None

    # Controls.

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("workload already started")
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def pause(self) -> None:
        """Return only once no further write can happen before ``resume()``."""
        self._pause_requested = True  # seen by the thread at its next check, lock or not
        if self.presence is not None:
            self.presence.wake()  # a vCPU waiting for a page gives up now
        with self._cond:  # waits out a batch in flight; the thread then parks
            self._pause_requested = True  # again, in case a racing resume() cleared it
            self._rebase = True

    def resume(self) -> None:
        with self._cond:
            self._pause_requested = False
            self._rebase = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop and join the thread, then drop every reference to guest memory."""
        self._stopping = True  # as in pause(): a vCPU at full speed sees it between batches
        if self.presence is not None:
            self.presence.wake()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            self._release()

    def set_presence(self, presence: PagePresence | None) -> None:
        """Touch only pages ``presence`` has (postcopy); None: all pages are there."""
        self.presence = presence

    def _give_up_wait(self) -> bool:
        """A vCPU waiting for a page stops waiting when it is paused or stopped."""
        return self._pause_requested or self._stopping

    def set_rate(self, rate: int | None) -> None:
        _check_rate(rate)
        with self._cond:
            self._rate = rate
            self._rebase = True
            self._cond.notify_all()

    @property
    def rate(self) -> int | None:
        return self._rate

    @property
    def paused(self) -> bool:
        return self._pause_requested

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def step(self, n: int) -> None:
        """Write the next ``n`` pages now, in the caller's thread (tests, deterministic use)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("workload stopped")
            done = 0
            while done < n:
                k = min(self.batch_pages, n - done)
                self._write(k)
                self.pages_written += k
                done += k

    # The vCPU thread.

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # a bug: keep it visible, the guest just stops dirtying
            log.exception("guest workload %s died", self._name)
            self.error = err

    def _loop(self) -> None:
        base_t = 0.0
        base_n = 0
        while True:
            wait_s = 0.0
            with self._cond:
                while not self._stopping and (self._pause_requested or self._rate == 0):
                    self._cond.wait()
                if self._stopping:
                    return
                now = self._clock.monotonic()
                if self._rebase:
                    base_t, base_n, self._rebase = now, self.pages_written, False
                rate = self._rate
                if rate is None:
                    due = self.batch_pages
                else:
                    done = self.pages_written - base_n
                    # The epsilon keeps float rounding (0.001 * 1000 = 0.99999...) from
                    # turning "one page is due" into a zero-length sleep, forever.
                    due = int((now - base_t) * rate + 1e-6) - done
                    backlog = max(BATCH_MAX_PAGES, int(rate * MAX_BACKLOG_S))
                    if due > backlog:  # count the forgiven pages as written
                        base_n -= due - backlog
                        due = backlog
                    if due <= 0:
                        # Sleep until a tick's worth of pages is due, not a single page:
                        # fewer, larger batches cost less CPU at high rates.
                        quantum = min(BATCH_MAX_PAGES, max(1, int(rate * TICK_S)))
                        wait_s = min((done + quantum) / rate - (now - base_t), MAX_SLEEP_S)
                if due > 0:
                    k = min(due, self.batch_pages)
                    self._write(k)
                    self.pages_written += k
                    if rate is not None:
                        continue
            # At full speed, sleep(0) after each batch hands the GIL to a waiting thread
            # (QMP, qtest, multifd senders) now instead of after the 5 ms switch interval.
            self._clock.sleep(max(wait_s, 0.0))

    @abstractmethod
    def _write(self, n: int) -> None:
        """Write and mark the next ``n`` pages (called with ``self._cond`` held)."""

    @abstractmethod
    def _release(self) -> None:
        """Drop references to guest memory (numpy views keep an mmap from closing)."""


def _check_rate(rate: int | None) -> None:
    if rate is not None and rate < 0:
        raise ValueError(f"dirty rate must not be negative, got {rate}")


# --- random dirtying ------------------------------------------------------------------------


class GuestWorkload(Workload):
    """Overwrites pages chosen at random (optionally mostly inside a hot set) with content of
    the same kinds as the image generator, marking each in its block's dirty bitmap.

    What is written (which pages, in which order, with which bytes) depends only on ``seed``
    and the configuration, never on timing: the thread only decides *when*.
    """

    def __init__(
        self,
        blocks: Sequence[RAMBlock],
        bitmaps: Mapping[str, DirtyBitmap],
        *,
        rate: int | None,
        seed: int = 0,
        mix: ImageMix = DEFAULT_MIX,
        hot_bytes: int = 0,
        hot_share: int = 90,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(rate=rate, clock=clock)
        for b in blocks:
            bm = bitmaps.get(b.name)
            if bm is None or bm.pages != b.pages:
                raise WorkloadError(f"no dirty bitmap of {b.pages} pages for block {b.name!r}")
        self._bitmaps = [bitmaps[b.name] for b in blocks]
        self._names = [b.name for b in blocks]
        self._arrays: list[npt.NDArray[np.uint8]] | None = [
            np.frombuffer(b.mem, dtype=np.uint8).reshape(b.pages, PAGE_SIZE) for b in blocks
        ]
        self._block_start = np.cumsum([0] + [b.pages for b in blocks])
        self._total = int(self._block_start[-1])
        if self._total == 0:
            raise WorkloadError("no guest RAM to dirty")
        hot_pages = hot_bytes // PAGE_SIZE
        if hot_pages > self._total:
            raise WorkloadError(
                f"hot set of {hot_bytes} bytes is larger than guest RAM ({self._total * PAGE_SIZE})"
            )
        if not 0 <= hot_share <= 100:
            raise WorkloadError(f"hot-share must be a percentage, got {hot_share}")
        self._source = PageSource(seed)
        # Each page written consumes exactly one word of ``_pick`` (which page, which kind)
        # and MATERIAL_WORDS of ``_content`` (its bytes), so the sequence of writes does not
        # depend on how the thread happens to batch them.
        self._pick = np.random.PCG64([seed, 11])
        self._content = np.random.PCG64([seed, 12])
        self._hot_pages = hot_pages
        self._hot_share = hot_share
        self._hot_start = int(self._pick.random_raw() % (self._total - hot_pages + 1))
        self._kind_cum = np.cumsum(mix.weights())
        self._kind_total = np.uint64(mix.total)
        self.per_kind = dict.fromkeys(KINDS, 0)

    def _write(self, n: int) -> None:
        arrays = self._arrays
        if arrays is None:
            raise RuntimeError("workload stopped")
        r = np.asarray(self._pick.random_raw(n), dtype=np.uint64)
        material = np.asarray(self._content.random_raw(n * MATERIAL_WORDS), dtype=np.uint64)
        material = material.reshape(n, MATERIAL_WORDS)
        page = (r & np.uint64(0xFFFFFFFFFF)) % np.uint64(self._total)
        if self._hot_pages:
            hot = ((r >> np.uint64(40)) & np.uint64(0xFF)) % np.uint64(100) < self._hot_share
            in_hot = np.uint64(self._hot_start) + page % np.uint64(self._hot_pages)
            page = np.where(hot, in_hot, page)
        kinds = np.searchsorted(self._kind_cum, (r >> np.uint64(48)) % self._kind_total, "right")
        for k, c in zip(*np.unique(kinds, return_counts=True), strict=True):
            self.per_kind[KINDS[k]] += int(c)
        # A page written twice in one batch must end with its later content, as if written
        # one by one; keep only the last write of each page.
        gpages = page.astype(np.int64)
        _, first_rev = np.unique(gpages[::-1], return_index=True)
        last = n - 1 - first_rev
        gpages, kinds, material = gpages[last], kinds[last], material[last]
        block = np.searchsorted(self._block_start, gpages, side="right") - 1
        local = gpages - self._block_start[block]
        if self.presence is not None and not self._await_pages(block, local):
            return  # paused or stopped while a page was missing: this batch is not written
        for b in np.unique(block).tolist():
            in_b = block == b
            for k in np.unique(kinds[in_b]).tolist():
                sel = in_b & (kinds == k)
                self._source.write_pages(arrays[b], local[sel], KINDS[k], material[sel])
        # Ordering: every page is marked *after* its bytes are written. A sync that clears
        # the bit between the write and the mark leaves the page dirty in the next period,
        # and a sync after the mark reads memory that already holds the write; either way
        # the final content is sent. Marking *before* writing would be wrong: a sync between
        # the mark and the write would clear the bit, the sender could copy the old bytes,
        # and the write would never be logged.
        for b in np.unique(block).tolist():
            self._bitmaps[b].mark_pages(local[block == b])

    def _await_pages(self, block: npt.NDArray[np.int64], local: npt.NDArray[np.int64]) -> bool:
        """Wait until every page of the batch is present (postcopy); False to give up."""
        presence = self.presence
        assert presence is not None
        for b, page in zip(block.tolist(), local.tolist(), strict=True):
            name = self._names[b]
            if not presence.is_present(name, page):
                if presence.wait_present(name, page, 1, self._give_up_wait) == 0:
                    return False
        return True

    def _release(self) -> None:
        self._arrays = None


# --- QEMU migration-test's sweep guest ------------------------------------------------------

SWEEP_START = 1 << 20
SWEEP_END = 100 << 20
_SWEEP_STATE = struct.Struct("<QQ")
# The guest prints 'B' each time its 6-bit sweep counter (the test's %bl) wraps.
SWEEP_B_INTERVAL = 64
# Serial output held while no sink is attached (a UART FIFO's worth, then oldest dropped).
SERIAL_BACKLOG_BYTES = 4096


class SweepWorkload(Workload):
    """QEMU's migration-test guest (a-b-bootblock): forever, for each 4 KiB page from
    ``start`` to ``end``, increment its first byte. Its position (next address, completed
    sweeps) is guest CPU state: ``state()``/``restore()`` carry it across a migration.
    """

    batch_pages = SWEEP_BATCH_PAGES

    def __init__(
        self,
        block: RAMBlock,
        bitmap: DirtyBitmap,
        *,
        rate: int | None = None,
        start: int = SWEEP_START,
        end: int = SWEEP_END,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(rate=rate, clock=clock)
        if start % PAGE_SIZE or end % PAGE_SIZE or not 0 <= start < end:
            raise WorkloadError(f"bad sweep range 0x{start:x}..0x{end:x}")
        if end > block.size:
            raise WorkloadError(
                f"sweep range ends at 0x{end:x}, beyond RAM block {block.name!r} "
                f"of 0x{block.size:x} bytes"
            )
        if bitmap.pages != block.pages:
            raise WorkloadError(f"dirty bitmap does not match block {block.name!r}")
        self._bitmap = bitmap
        self._block_name = block.name
        self._first = start // PAGE_SIZE
        self._pages = (end - start) // PAGE_SIZE
        arr = np.frombuffer(block.mem, dtype=np.uint8).reshape(-1, PAGE_SIZE)
        self._bytes: npt.NDArray[np.uint8] | None = arr[self._first : self._first + self._pages, 0]
        self._pos = 0  # index of the next page to increment, relative to start
        self.sweeps = 0
        # Serial port: the guest prints 'A' when it boots (its first write, unless it was
        # restored from a migrated state: a destination never boots) and 'B' every
        # SWEEP_B_INTERVAL sweeps. Output waits in ``_serial_backlog`` until a sink is
        # attached, so nothing printed between start() and attach_serial() is lost.
        self._booted = False
        self._serial: Callable[[bytes], None] | None = None
        self._serial_backlog = bytearray()

    def attach_serial(self, sink: Callable[[bytes], None]) -> None:
        """Send the guest's serial output to ``sink`` (called from the vCPU thread, with the
        workload's lock held: it must not call back into the workload)."""
        with self._cond:
            self._serial = sink
            pending, self._serial_backlog = bytes(self._serial_backlog), bytearray()
            if pending:
                sink(pending)

    def _print(self, data: bytes) -> None:
        if self._serial is not None:
            self._serial(data)
            return
        self._serial_backlog += data
        del self._serial_backlog[:-SERIAL_BACKLOG_BYTES]

    def _write(self, n: int) -> None:
        col = self._bytes
        if col is None:
            raise RuntimeError("workload stopped")
        if not self._booted:
            self._booted = True
            self._print(b"A")
        presence = self.presence
        while n:
            k = min(n, self._pages - self._pos)
            if presence is not None:  # postcopy: touch only pages that are there
                k = presence.wait_present(
                    self._block_name, self._first + self._pos, k, self._give_up_wait
                )
                if k == 0:
                    return
            col[self._pos : self._pos + k] += 1  # uint8: wraps at 256 like incb
            self._bitmap.mark(self._first + self._pos, k)  # after the write: see GuestWorkload
            self._pos += k
            n -= k
            if self._pos == self._pages:
                self._pos = 0
                self.sweeps += 1
                if self.sweeps % SWEEP_B_INTERVAL == 0:
                    self._print(b"B")

    def state(self) -> bytes:
        """The guest CPU's position: next address and completed sweeps (16 bytes)."""
        with self._cond:
            addr = (self._first + self._pos) * PAGE_SIZE
            return _SWEEP_STATE.pack(addr, self.sweeps)

    def restore(self, data: bytes) -> None:
        """Continue from a ``state()`` taken on the source (before ``start()``)."""
        if len(data) != _SWEEP_STATE.size:
            raise ValueError(f"sweep state is {_SWEEP_STATE.size} bytes, got {len(data)}")
        addr, sweeps = _SWEEP_STATE.unpack(data)
        pos, rem = divmod(addr - self._first * PAGE_SIZE, PAGE_SIZE)
        if rem or not 0 <= pos < self._pages:
            raise ValueError(f"sweep address 0x{addr:x} outside the sweep range")
        with self._cond:
            self._pos = pos
            self.sweeps = sweeps
            self._booted = True  # it resumes mid-loop: no boot banner

    def _release(self) -> None:
        self._bytes = None


def check_sweep(mem: memoryview, start: int = SWEEP_START, end: int = SWEEP_END) -> str | None:
    """QEMU migration-test's ``check_guest_memory``: the first bytes of the pages, in order,
    hold one value and then, from some page on, that value minus one (the sweep's front).
    Returns None if so, else a description of the first bad page."""
    col = np.frombuffer(mem, dtype=np.uint8)[start:end:PAGE_SIZE]
    if len(col) == 0:
        return None
    drop = (col[:-1] - col[1:]).astype(np.uint8)  # wraps, as the guest's byte does
    changes = np.flatnonzero(drop)
    if len(changes) == 0:
        return None
    bad = changes[drop[changes] != 1]
    if len(bad) or len(changes) > 1:
        i = int(bad[0]) if len(bad) else int(changes[1])
        addr = start + (i + 1) * PAGE_SIZE
        return f"memory content inconsistency at 0x{addr:x}: 0x{col[i + 1]:x} after 0x{col[i]:x}"
    return None


# --- specs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirtySpec:
    """``idle`` (rate 0) or ``dirty,...``: a ``GuestWorkload``."""

    rate: int | None = 0
    seed: int = 0
    hot_bytes: int = 0
    hot_share: int = 90
    mix: ImageMix = field(default=DEFAULT_MIX)

    @property
    def kind(self) -> str:
        return "idle" if self.rate == 0 else "dirty"


@dataclass(frozen=True)
class SweepSpec:
    """``sweep,...``: a ``SweepWorkload``."""

    rate: int | None = None
    start: int = SWEEP_START
    end: int = SWEEP_END
    kind: str = "sweep"


WorkloadSpec = DirtySpec | SweepSpec

DEFAULT_DIRTY_RATE = 10000  # pages/s for a bare "dirty"

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_size(key: str, value: str) -> int:
    v = value.strip()
    unit = v[-1:].upper() if v[-1:].isalpha() else ""
    try:
        n = int(v[: len(v) - len(unit)], 0)
    except ValueError:
        raise WorkloadSpecError(f"{key}={value!r}: not a size (e.g. 64M, 1G, 4096)") from None
    if unit not in _SUFFIX or n < 0:
        raise WorkloadSpecError(f"{key}={value!r}: not a size (e.g. 64M, 1G, 4096)")
    size = n * _SUFFIX[unit]
    if size % PAGE_SIZE:
        raise WorkloadSpecError(f"{key}={value!r}: must be a multiple of {PAGE_SIZE} bytes")
    return size


def _parse_int(key: str, value: str, *, allow_max: bool = False) -> int | None:
    if allow_max and value == "max":
        return None
    try:
        n = int(value, 0)
    except ValueError:
        hint = " or 'max'" if allow_max else ""
        raise WorkloadSpecError(f"{key}={value!r}: expected an integer{hint}") from None
    if n < 0:
        raise WorkloadSpecError(f"{key}={value!r}: must not be negative")
    return n


_DIRTY_KEYS = ("rate", "seed", "hot", "hot-share", *KINDS)
_SWEEP_KEYS = ("rate", "start", "end")


def parse_workload_spec(text: str) -> WorkloadSpec:
    """Parse ``idle``, ``dirty[,rate=N|max][,seed=N][,hot=SIZE][,hot-share=PCT][,KIND=W...]``
    or ``sweep[,rate=N|max][,start=SIZE][,end=SIZE]``. KIND weights (zero, code, text, sparse,
    random) replace the default content mix; kinds not named get weight 0."""
    name, *parts = [p.strip() for p in text.strip().split(",")]
    params: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise WorkloadSpecError(f"workload {name!r}: expected KEY=VALUE, got {part!r}")
        if key in params:
            raise WorkloadSpecError(f"workload {name!r}: {key!r} given twice")
        params[key] = value
    allowed = {"idle": (), "dirty": _DIRTY_KEYS, "sweep": _SWEEP_KEYS}.get(name)
    if allowed is None:
        raise WorkloadSpecError(f"unknown workload {name!r} (workloads: idle, dirty, sweep)")
    for key in params:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise WorkloadSpecError(
                f"workload {name!r}: unknown parameter {key!r} (parameters: {known})"
            )
    if name == "idle":
        return DirtySpec(rate=0)
    if name == "sweep":
        start = _parse_size("start", params.get("start", str(SWEEP_START)))
        end = _parse_size("end", params.get("end", str(SWEEP_END)))
        if end <= start:
            raise WorkloadSpecError(f"sweep: end (0x{end:x}) must be above start (0x{start:x})")
        rate = _parse_int("rate", params["rate"], allow_max=True) if "rate" in params else None
        return SweepSpec(rate=rate, start=start, end=end)
    rate = (
        _parse_int("rate", params["rate"], allow_max=True)
        if "rate" in params
        else DEFAULT_DIRTY_RATE
    )
    seed = _parse_int("seed", params.get("seed", "0")) or 0
    hot = _parse_size("hot", params["hot"]) if "hot" in params else 0
    share = _parse_int("hot-share", params.get("hot-share", "90")) or 0
    if share > 100:
        raise WorkloadSpecError(f"hot-share={share}: must be a percentage (0..100)")
    if "hot-share" in params and not hot:
        raise WorkloadSpecError("hot-share needs a hot set size (hot=SIZE)")
    weights = {k: params[k] for k in KINDS if k in params}
    mix = DEFAULT_MIX
    if weights:
        try:
            mix = ImageMix.from_mapping({k: _parse_int(k, v) or 0 for k, v in weights.items()})
        except ImageMixError as err:
            raise WorkloadSpecError(f"workload 'dirty': {err}") from err
    return DirtySpec(rate=rate, seed=seed, hot_bytes=hot, hot_share=share, mix=mix)


def create_workload(
    spec: WorkloadSpec,
    blocks: Sequence[RAMBlock],
    bitmaps: Mapping[str, DirtyBitmap],
    clock: Clock | None = None,
) -> Workload:
    """Bind a spec to the machine's RAM. A sweep runs over the first block, as QEMU's test
    guest runs in low memory."""
    if isinstance(spec, SweepSpec):
        if not blocks:
            raise WorkloadError("no guest RAM to sweep")
        bm = bitmaps.get(blocks[0].name)
        if bm is None:
            raise WorkloadError(f"no dirty bitmap for block {blocks[0].name!r}")
        return SweepWorkload(
            blocks[0], bm, rate=spec.rate, start=spec.start, end=spec.end, clock=clock
        )
    return GuestWorkload(
        blocks,
        bitmaps,
        rate=spec.rate,
        seed=spec.seed,
        mix=spec.mix,
        hot_bytes=spec.hot_bytes,
        hot_share=spec.hot_share,
        clock=clock,
    )
