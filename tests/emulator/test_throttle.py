"""auto-converge's decision (migration_trigger_throttle, mig_throttle_guest_down) and the
throttled vCPU of the guest workload, on numbers and a fake clock."""

from __future__ import annotations

import threading

import pytest

from migemu.emulator.guest.dirty import DirtyBitmap
from migemu.emulator.guest.workload import GuestWorkload, WorkloadError
from migemu.emulator.migration.parameters import default_parameters
from migemu.emulator.migration.throttle import AutoConverge, CpuThrottle
from migemu.emulator.ram import map_anonymous

MIB = 1 << 20


def params(**overrides: object) -> dict[str, object]:
    p = default_parameters()
    p.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return p


def test_throttles_on_the_second_high_period_then_steps_up_to_the_max() -> None:
    throttle = CpuThrottle()
    ac = AutoConverge(throttle)
    p = params(cpu_throttle_initial=5, cpu_throttle_increment=50, max_cpu_throttle=95)
    high = (30 * MIB, 30 * MIB)  # dirtied 100% of transferred > 50%
    assert ac.period_ended(*high, p) is None and not throttle.active
    assert ac.period_ended(*high, p) == 5
    assert ac.period_ended(*high, p) is None
    assert ac.period_ended(*high, p) == 55
    ac.period_ended(*high, p)
    assert ac.period_ended(*high, p) == 95  # min(55 + 50, 95)
    ac.period_ended(*high, p)
    assert ac.period_ended(*high, p) is not None and throttle.percentage == 95


def test_a_low_period_does_not_reset_the_counter() -> None:
    """``(dirty > threshold) && (++cnt >= 2)``: only high periods count, never reset."""
    throttle = CpuThrottle()
    ac = AutoConverge(throttle)
    p = params()
    ac.period_ended(30 * MIB, 30 * MIB, p)
    assert ac.period_ended(15 * MIB, 30 * MIB, p) is None  # exactly 50%: not above
    assert ac.period_ended(16 * MIB, 30 * MIB, p) == 20


def test_threshold_parameter() -> None:
    throttle = CpuThrottle()
    ac = AutoConverge(throttle)
    p = params(throttle_trigger_threshold=100)
    for _ in range(4):
        assert ac.period_ended(30 * MIB, 30 * MIB, p) is None


def test_tailslow_increments_no_more_than_to_reach_the_threshold() -> None:
    throttle = CpuThrottle()
    throttle.set(20)
    ac = AutoConverge(throttle)
    p = params(cpu_throttle_tailslow=True, cpu_throttle_increment=30)
    ac.period_ended(16 * MIB, 30 * MIB, p)
    # cpu_now 80, threshold 15 MiB of 16 MiB dirtied: ideal int(80 * 0.9375) = 75 -> +5
    assert ac.period_ended(16 * MIB, 30 * MIB, p) == 25
    ac.period_ended(60 * MIB, 30 * MIB, p)
    # cpu_now 75, ideal int(75 * 0.25) = 18 -> 57, capped by the increment: +30
    assert ac.period_ended(60 * MIB, 30 * MIB, p) == 55


def test_cpu_throttle_clamps_notifies_and_stops() -> None:
    throttle = CpuThrottle()
    seen: list[int] = []
    throttle.subscribe(seen.append)
    throttle.set(0)
    throttle.set(150)
    throttle.set(150)
    throttle.stop()
    assert seen == [0, 1, 99, 0]


class FakeClock:
    """Time moves only when the vCPU sleeps; the test waits for it to have slept enough."""

    def __init__(self) -> None:
        self.t = 0.0
        self.cond = threading.Condition()

    def monotonic(self) -> float:
        with self.cond:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self.cond:
            self.t += max(seconds, 1e-4)
            self.cond.notify_all()

    def wait_until(self, t: float) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.t >= t, timeout=30)


@pytest.mark.parametrize("pct", [0, 50, 75])
def test_a_throttled_workload_writes_its_share_of_the_pages(pct: int) -> None:
    block = map_anonymous("mem0", 8 * MIB)
    dirty = {"mem0": DirtyBitmap(block.pages)}
    clock = FakeClock()
    rate = 100_000  # pages per second of guest time
    workload = GuestWorkload([block], dirty, rate=rate, clock=clock)
    try:
        workload.set_throttle(pct)
        workload.start()
        clock.wait_until(2.0)
        workload.pause()
        written, elapsed = workload.pages_written, clock.monotonic()
    finally:
        workload.stop()
        block.close()
    share = written / (rate * elapsed)
    assert abs(share - (100 - pct) / 100) < 0.03, share


def test_throttle_out_of_range() -> None:
    block = map_anonymous("mem0", MIB)
    workload = GuestWorkload([block], {"mem0": DirtyBitmap(block.pages)}, rate=0)
    try:
        with pytest.raises(WorkloadError):
            workload.set_throttle(100)
    finally:
        workload.stop()
        block.close()
