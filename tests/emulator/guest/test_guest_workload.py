"""Guest workloads: determinism, rate limiting on a fake clock, pause that really freezes,
the sweep guest and its state, and workload spec parsing."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from migemu.emulator.guest.dirty import DirtyBitmap
from migemu.emulator.guest.image import ImageMix
from migemu.emulator.guest.workload import (
    DEFAULT_DIRTY_RATE,
    SWEEP_END,
    SWEEP_START,
    DirtySpec,
    GuestWorkload,
    SweepSpec,
    SweepWorkload,
    Workload,
    WorkloadError,
    WorkloadSpecError,
    check_sweep,
    create_workload,
    parse_workload_spec,
)
from migemu.emulator.guest.zero import zero_pages
from migemu.emulator.ram import PAGE_SIZE, RAMBlock, map_anonymous

MIB = 1 << 20
DEADLINE_S = 20.0


class FakeClock:
    """Time moves only when the vCPU sleeps, so rates are exact and tests never wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.sleeps += 1


def wait_until(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0)  # yield the GIL to the vCPU thread; not a wait for an event


def digest(block: RAMBlock) -> str:
    return hashlib.sha256(block.mem).hexdigest()


@pytest.fixture
def blocks() -> Iterator[list[RAMBlock]]:
    made = [map_anonymous("pc.ram", 8 * MIB), map_anonymous("extra", 2 * MIB)]
    yield made
    for b in made:
        b.close()  # fails (BufferError) if a stopped workload still holds the memory


def bitmaps(blocks: list[RAMBlock]) -> dict[str, DirtyBitmap]:
    return {b.name: DirtyBitmap(b.pages) for b in blocks}


@pytest.fixture
def cleanup() -> Iterator[list[Workload]]:
    started: list[Workload] = []
    yield started
    for w in started:
        w.stop()


def test_step_is_deterministic_and_marks_what_it_writes(blocks):
    other = [map_anonymous(b.name, b.size) for b in blocks]
    try:
        bms_a, bms_b = bitmaps(blocks), bitmaps(other)
        a = GuestWorkload(blocks, bms_a, rate=None, seed=7)
        b = GuestWorkload(other, bms_b, rate=None, seed=7)
        a.step(3000)
        b.step(1000)
        b.step(2000)  # batching must not matter
        assert [digest(x) for x in blocks] == [digest(x) for x in other]
        snaps = {}
        for name in bms_a:
            snaps[name] = bms_a[name].sync_and_clear()
            assert np.array_equal(snaps[name].mask, bms_b[name].sync_and_clear().mask)
            assert snaps[name].count() > 0
        assert a.per_kind == b.per_kind and sum(a.per_kind.values()) == a.pages_written == 3000
        # Every page that differs from zero was marked (all memory started zero).
        for blk in blocks:
            written = ~zero_pages(blk.view())
            assert not (written & ~snaps[blk.name].mask).any()
        a.stop()
        b.stop()
    finally:
        for o in other:
            o.close()


def test_threaded_run_writes_the_same_sequence_as_step(blocks, cleanup):
    clock = FakeClock()
    bms = bitmaps(blocks)
    w = GuestWorkload(blocks, bms, rate=5000, seed=3, clock=clock)
    cleanup.append(w)
    w.start()
    wait_until(lambda: w.pages_written >= 2000, "2000 pages")
    w.pause()
    n = w.pages_written
    w.stop()
    other = [map_anonymous(b.name, b.size) for b in blocks]
    try:
        ref = GuestWorkload(other, bitmaps(other), rate=None, seed=3)
        ref.step(n)
        ref.stop()
        assert [digest(x) for x in blocks] == [digest(x) for x in other]
    finally:
        for o in other:
            o.close()


def test_rate_limit_on_fake_clock(blocks, cleanup):
    clock = FakeClock()
    w = GuestWorkload(blocks, bitmaps(blocks), rate=1000, seed=1, clock=clock)
    cleanup.append(w)
    w.start()
    wait_until(lambda: w.pages_written >= 3000, "3000 pages")
    w.pause()
    # Time only advances in the vCPU's sleeps: it wrote what 1000 pages/s allows, no more.
    assert w.pages_written <= 1000 * clock.now + 1
    assert w.pages_written >= 1000 * clock.now - 256
    w.set_rate(4000)
    t0, n0 = clock.now, w.pages_written
    w.resume()
    wait_until(lambda: w.pages_written >= n0 + 6000, "6000 more pages")
    w.pause()
    rate = (w.pages_written - n0) / (clock.now - t0)
    assert 3900 < rate < 4100


def test_falling_behind_does_not_burst_forever(blocks, cleanup):
    clock = FakeClock()
    w = GuestWorkload(blocks, bitmaps(blocks), rate=1000, seed=1, clock=clock)
    cleanup.append(w)
    w.start()
    wait_until(lambda: w.pages_written >= 500, "500 pages")
    with clock._lock:
        clock.now += 10.0  # the host stalled the vCPU for 10 s: 10000 pages "due"
    n0 = w.pages_written
    wait_until(lambda: w.pages_written >= n0 + 2000, "2000 more pages")
    w.pause()
    # At most MAX_BACKLOG_S's worth (floored at one batch) of the debt is paid back.
    assert w.pages_written <= 1000 * (clock.now - 10.0) + 256 + 1


def test_idle_writes_nothing(blocks, cleanup):
    clock = FakeClock()
    w = create_workload(parse_workload_spec("idle"), blocks, bitmaps(blocks), clock)
    cleanup.append(w)
    w.start()
    assert w.rate == 0
    w.stop()
    assert w.pages_written == 0 and clock.sleeps == 0


def test_pause_really_freezes(blocks, cleanup):
    bms = bitmaps(blocks)
    w = GuestWorkload(blocks, bms, rate=None, seed=2)  # as fast as it can: the worst case
    cleanup.append(w)
    w.start()
    for cycle in range(5):
        target = w.pages_written + 500
        wait_until(lambda t=target: w.pages_written >= t, "writes")
        w.pause()
        assert w.paused
        before = ([digest(b) for b in blocks], w.pages_written, [bm.count() for bm in bms.values()])
        # Give a misbehaving vCPU a window to write; a correct one is parked on its condition.
        threading.Event().wait(0.05)
        after = ([digest(b) for b in blocks], w.pages_written, [bm.count() for bm in bms.values()])
        assert before == after, f"guest wrote after pause() returned (cycle {cycle})"
        w.resume()
    w.stop()
    assert not w.running and w.error is None


def test_no_write_is_missed_by_syncs(blocks, cleanup):
    """The migration invariant: copy the dirty pages of each sync to a shadow while the guest
    runs; after pause and a final sync, the shadow equals guest memory."""
    bms = bitmaps(blocks)
    w = GuestWorkload(blocks, bms, rate=None, seed=5, hot_bytes=1 * MIB, hot_share=50)
    cleanup.append(w)
    shadows = {b.name: bytearray(b.size) for b in blocks}

    def copy_round() -> None:
        for b in blocks:
            snap = bms[b.name].sync_and_clear()
            for first, n in snap.runs():
                lo, hi = first * PAGE_SIZE, (first + n) * PAGE_SIZE
                shadows[b.name][lo:hi] = b.mem[lo:hi]

    w.start()
    rounds = 0
    while rounds < 30 or w.pages_written < 5000:
        copy_round()
        rounds += 1
        assert rounds < 100000
    w.pause()
    copy_round()
    for b in blocks:
        assert shadows[b.name] == b.mem[:]
    w.stop()


def test_hot_set_takes_its_share(blocks):
    bms = bitmaps(blocks)
    w = GuestWorkload(blocks, bms, rate=None, seed=4, hot_bytes=256 * 1024, hot_share=100)
    w.step(2000)
    w.stop()
    dirty = [(name, r) for name, bm in bms.items() for r in bm.sync_and_clear().runs()]
    total = sum(n for _, (_, n) in dirty)
    assert total <= 64  # every write inside the 64-page hot set
    with pytest.raises(WorkloadError, match="larger than guest RAM"):
        GuestWorkload(blocks, bms, rate=1, hot_bytes=64 * MIB)


def test_controls(blocks, cleanup):
    bms = bitmaps(blocks)
    w = GuestWorkload(blocks, bms, rate=0, seed=1, mix=ImageMix.parse("random=1"))
    cleanup.append(w)
    w.start()
    with pytest.raises(RuntimeError):
        w.start()
    with pytest.raises(ValueError):
        w.set_rate(-1)
    w.set_rate(None)
    wait_until(lambda: w.pages_written > 100, "writes after set_rate")
    w.stop()
    w.stop()  # idempotent
    with pytest.raises(RuntimeError):
        w.step(1)
    with pytest.raises(WorkloadError, match="no dirty bitmap"):
        GuestWorkload(blocks, {}, rate=1)


def test_sweep_matches_qemu_guest_and_migrates_its_state():
    src = map_anonymous("pc.ram", 128 * MIB)
    dst = map_anonymous("pc.ram", 128 * MIB)
    try:
        bm = DirtyBitmap(src.pages)
        sweep_pages = (SWEEP_END - SWEEP_START) // PAGE_SIZE
        s = SweepWorkload(src, bm)
        s.step(sweep_pages + 1000)
        assert s.sweeps == 1
        assert check_sweep(src.view()) is None
        col = np.frombuffer(src.mem, dtype=np.uint8)[SWEEP_START:SWEEP_END:PAGE_SIZE]
        assert col[0] == 2 and col[999] == 2 and col[1000] == 1
        del col
        snap = bm.sync_and_clear()
        assert list(snap.runs()) == [(SWEEP_START // PAGE_SIZE, sweep_pages)]
        state = s.state()
        s.stop()
        # "Migrate": copy memory and CPU state, continue on the destination.
        dst.mem[:] = src.mem[:]
        d = SweepWorkload(dst, DirtyBitmap(dst.pages))
        d.restore(state)
        d.step(sweep_pages)
        assert d.sweeps == 2 and check_sweep(dst.view()) is None
        with pytest.raises(ValueError):
            d.restore(b"short")
        d.stop()
        dst.mem[SWEEP_START + 50 * PAGE_SIZE] = 9
        assert "inconsistency at 0x" in (check_sweep(dst.view()) or "")
    finally:
        src.close()
        dst.close()


def test_sweep_range_checks():
    small = map_anonymous("pc.ram", 16 * MIB)
    try:
        with pytest.raises(WorkloadError, match="beyond RAM block"):
            SweepWorkload(small, DirtyBitmap(small.pages))
        w = create_workload(
            parse_workload_spec("sweep,start=1M,end=8M,rate=max"),
            [small],
            {"pc.ram": DirtyBitmap(small.pages)},
        )
        assert isinstance(w, SweepWorkload)
        w.stop()
    finally:
        small.close()


@pytest.mark.parametrize(
    "text,spec",
    [
        ("idle", DirtySpec(rate=0)),
        ("dirty", DirtySpec(rate=DEFAULT_DIRTY_RATE)),
        ("dirty,rate=20000,seed=7", DirtySpec(rate=20000, seed=7)),
        ("dirty,rate=max,hot=64M", DirtySpec(rate=None, hot_bytes=64 * MIB)),
        (" dirty , rate=0x10 , hot=4096, hot-share=75", DirtySpec(16, 0, 4096, 75)),
        ("dirty,text=1,random=1", DirtySpec(DEFAULT_DIRTY_RATE, mix=ImageMix(0, 0, 1, 0, 1))),
        ("sweep", SweepSpec()),
        ("sweep,rate=100,start=2M,end=1G", SweepSpec(rate=100, start=2 * MIB, end=1 << 30)),
    ],
)
def test_spec_parsing(text, spec):
    assert parse_workload_spec(text) == spec


@pytest.mark.parametrize(
    "text,msg",
    [
        ("", "unknown workload ''"),
        ("busy", "unknown workload 'busy'"),
        ("idle,rate=3", "unknown parameter 'rate'"),
        ("dirty,speed=3", "unknown parameter 'speed'.*rate, seed, hot"),
        ("dirty,rate", "expected KEY=VALUE"),
        ("dirty,rate=", "expected KEY=VALUE"),
        ("dirty,rate=fast", "rate='fast': expected an integer or 'max'"),
        ("dirty,rate=-5", "must not be negative"),
        ("dirty,seed=max", "expected an integer"),
        ("dirty,rate=1,rate=2", "given twice"),
        ("dirty,hot=64Q", "not a size"),
        ("dirty,hot=1000", "multiple of 4096"),
        ("dirty,hot=1M,hot-share=101", "percentage"),
        ("dirty,hot-share=50", "needs a hot set"),
        ("dirty,zero=0", "more than 0"),
        ("sweep,start=8M,end=4M", "must be above start"),
        ("sweep,seed=1", "unknown parameter 'seed'"),
    ],
)
def test_spec_errors(text, msg):
    with pytest.raises(WorkloadSpecError, match=msg):
        parse_workload_spec(text)


@given(st.text(alphabet="idlerysweepatxhomcn=,-0123456789MKG ", max_size=60))
def test_spec_parser_never_crashes(text):
    try:
        spec = parse_workload_spec(text)
    except WorkloadSpecError:
        return
    assert isinstance(spec, DirtySpec | SweepSpec)


@given(st.text(max_size=40))
def test_spec_parser_never_crashes_on_any_text(text):
    try:
        parse_workload_spec(text)
    except WorkloadSpecError:
        pass


def test_written_bytes_are_pinned():
    # Same bytes with numpy 1.26 and 2.x: what a seeded guest writes is part of recorded runs.
    blk = map_anonymous("pc.ram", 8 * MIB)
    try:
        w = GuestWorkload([blk], bitmaps([blk]), rate=None, seed=5, hot_bytes=MIB)
        w.step(3000)
        w.stop()
        assert digest(blk) == "e0437699a85985f8fbcc0b9cb9356d8e724f760bb4383ffe77bd2317ed947f47"
    finally:
        blk.close()
