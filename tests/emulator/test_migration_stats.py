"""MigrationStats: QEMU 7.2's counters and formulas, driven by a fake clock (no sleeps), checked
bit for bit against numbers in the real transcripts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from migemu.emulator.migration.stats import (
    BUFFER_DELAY_MS,
    TARGET_PAGE_SIZE,
    MigrationStats,
    StatsSnapshot,
)

TRANSCRIPTS = Path("/work/shared/reference/transcripts")
RAM_256M = 256 * 1024 * 1024
PACKET_LEN = 320 + 8 * 128  # MultiFDPacket_t + 128 offsets (facts §5.2)


class FakeClock:
    """Integer nanoseconds, like time.monotonic_ns."""

    def __init__(self, start_ns: int = 1_000_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: int) -> None:
        self.now_ns += ms * 1_000_000


def running(clock: FakeClock, downtime_limit_ms: int = 300) -> MigrationStats:
    stats = MigrationStats(clock)
    stats.start(RAM_256M)
    stats.begin_setup(downtime_limit_ms)
    return stats


def test_fresh_and_started_snapshot_is_all_zero_except_total_and_page_size():
    clock = FakeClock()
    stats = MigrationStats(clock)
    assert stats.snapshot() == StatsSnapshot(elapsed_time=stats.snapshot().elapsed_time)
    stats.start(RAM_256M)
    snap = stats.snapshot()
    assert snap.total == RAM_256M and snap.page_size == TARGET_PAGE_SIZE
    assert snap.mbps == 0.0 and isinstance(snap.mbps, float)
    assert snap.skipped == 0 and snap.normal_bytes == 0 and snap.elapsed_time == 0


def test_times_setup_total_and_expected_downtime_start():
    clock = FakeClock()
    stats = MigrationStats(clock)
    stats.start(RAM_256M)
    clock.advance_ms(2)
    stats.begin_setup(300)
    clock.advance_ms(1)
    stats.end_setup()
    clock.advance_ms(51)
    snap = stats.snapshot()
    assert snap.setup_time == 1
    assert snap.elapsed_time == 54
    assert snap.expected_downtime == 300  # REC: "expected-downtime": 300 = downtime-limit
    assert snap.total_time == 0


def test_clock_read_as_whole_milliseconds():
    clock = FakeClock(10_000_000_000)
    stats = MigrationStats(clock)
    stats.start(RAM_256M)
    clock.now_ns = 10_099_999_999
    assert stats.snapshot().elapsed_time == 99


def test_update_waits_for_a_full_window():
    clock = FakeClock()
    stats = running(clock)
    stats.add_main_stream_bytes(5_000_000)
    clock.advance_ms(BUFFER_DELAY_MS - 1)
    assert not stats.update(300)
    assert stats.snapshot().mbps == 0.0  # REC: the first query (54 ms) shows "mbps": 0
    clock.advance_ms(1)
    assert stats.update(300)
    assert stats.snapshot().mbps == 400.0


def test_window_mbps_is_bit_identical_to_rec():
    # d_multifd_zstd: 13692788 bytes in a 100 ms window -> 1095.4230400000001 exactly
    clock = FakeClock()
    stats = running(clock)
    stats.add_main_stream_bytes(13_692_788)
    clock.advance_ms(100)
    stats.update(300)
    assert stats.snapshot().mbps == 1095.4230400000001


def test_window_restarts_after_each_update():
    clock = FakeClock()
    stats = running(clock)
    stats.add_main_stream_bytes(1_000_000)
    clock.advance_ms(100)
    stats.update(300)
    stats.add_main_stream_bytes(500_000)
    clock.advance_ms(50)
    assert not stats.update(300)
    clock.advance_ms(150)
    assert stats.update(300)
    assert stats.snapshot().mbps == 500_000 * 8 / 0.2 / 1e6


def test_window_counts_main_stream_and_multifd_bytes_not_wire_bytes():
    clock = FakeClock()
    stats = running(clock)
    stats.add_ram_bytes(1000, vm_running=True)  # main stream
    stats.add_main_stream_bytes(24)  # main stream, not RAM
    stats.add_multifd_packet(PACKET_LEN, 128)  # multifd-bytes
    stats.add_multifd_wire_bytes(12345)  # honest, ours only
    clock.advance_ms(100)
    stats.update(300)
    total = 1000 + 24 + PACKET_LEN + 128 * 4096
    assert stats.snapshot().mbps == ((total * 8.0) / 0.1) / 1000.0 / 1000.0


def test_pages_per_second_over_window_truncated():
    clock = FakeClock()
    stats = running(clock)
    stats.add_normal_pages(5000)
    stats.add_zero_pages(648)
    clock.advance_ms(100)
    stats.update(300)
    assert stats.snapshot().pages_per_second == 56480  # a REC value
    stats.add_normal_pages(7)
    clock.advance_ms(101)
    stats.update(300)
    assert stats.snapshot().pages_per_second == 69  # 69.3 truncated like double -> uint64


def test_threshold_size_is_bandwidth_times_downtime_limit():
    clock = FakeClock()
    stats = running(clock)
    stats.add_main_stream_bytes(1_000_000)
    clock.advance_ms(100)
    stats.update(300)
    assert stats.threshold_size == 1_000_000 // 100 * 300


def test_expected_downtime_stays_at_limit_while_dirty_rate_is_zero():
    clock = FakeClock()
    stats = running(clock, downtime_limit_ms=300)
    stats.set_remaining(100_000_000)
    stats.add_main_stream_bytes(10_000_000)
    clock.advance_ms(100)
    stats.update(300)
    assert stats.snapshot().expected_downtime == 300  # as in every REC reply


def test_expected_downtime_is_remaining_over_bandwidth_once_pages_get_dirty():
    clock = FakeClock()
    stats = running(clock)
    stats.bitmap_sync(0)  # starts the dirty-rate period
    clock.advance_ms(1001)
    stats.bitmap_sync(2002)  # 2002 pages over 1001 ms -> 2000 pages/s
    assert stats.snapshot().dirty_pages_rate == 2000
    stats.set_remaining(50_000_000)
    stats.add_main_stream_bytes(10_000_000)
    clock.advance_ms(100)
    stats.update(300)
    # bandwidth over the whole window since begin_setup: 10e6 bytes / 1101 ms
    assert stats.snapshot().expected_downtime == int(50_000_000 / (10_000_000 / 1101))


def test_expected_downtime_needs_more_than_10000_bytes_in_the_window():
    clock = FakeClock()
    stats = running(clock)
    stats.bitmap_sync(0)
    clock.advance_ms(1001)
    stats.bitmap_sync(5000)
    clock.advance_ms(100)
    stats.update(300)  # window 1: nothing sent
    stats.set_remaining(50_000_000)
    stats.add_main_stream_bytes(10_000)
    clock.advance_ms(100)
    stats.update(300)
    assert stats.snapshot().expected_downtime == 300


def test_bitmap_sync_counts_passes_and_rate_period():
    clock = FakeClock()
    stats = running(clock)
    assert stats.bitmap_sync(100) == 1
    clock.advance_ms(1000)
    assert stats.bitmap_sync(100) == 2
    assert stats.snapshot().dirty_pages_rate == 0  # not *more* than 1000 ms yet
    clock.advance_ms(1)
    assert stats.bitmap_sync(100) == 3
    assert stats.snapshot().dirty_pages_rate == 300 * 1000 // 1001
    assert stats.snapshot().dirty_sync_count == 3


def test_completion_formula_and_downtime():
    clock = FakeClock()
    stats = MigrationStats(clock)
    stats.start(RAM_256M)
    stats.begin_setup(300)
    clock.advance_ms(3)
    stats.end_setup()
    stats.add_main_stream_bytes(1_000_000)
    clock.advance_ms(997)
    stats.vm_stopped()
    clock.advance_ms(50)
    stats.complete()
    snap = stats.snapshot()
    assert snap.total_time == 1050
    assert snap.downtime == 50
    assert snap.setup_time == 3
    assert snap.mbps == (1_000_000 * 8.0) / 1047 / 1000


def test_pages_per_second_survives_completion():
    clock = FakeClock()
    stats = running(clock)
    stats.add_normal_pages(100)
    clock.advance_ms(100)
    stats.update(300)
    stats.vm_stopped()
    stats.complete()
    assert stats.snapshot().pages_per_second == 1000


def test_completed_before_complete_shows_zero_times_like_rec_race():
    clock = FakeClock()
    stats = running(clock)
    clock.advance_ms(500)
    stats.vm_stopped()
    snap = stats.snapshot()
    assert snap.total_time == 0 and snap.downtime == 0


@pytest.mark.parametrize(
    ("total_time", "setup_time", "downtime", "mbps"),
    [
        (1145, 0, 44, 1141.0686532751092),  # d_multifd_zstd completed
        (513, 0, None, 2548.0651072124756),  # e_cancel second migration, completed
    ],
)
def test_completion_mbps_bit_identical_to_rec(total_time, setup_time, downtime, mbps):
    total_bytes = round(mbps * (total_time - setup_time) * 1000 / 8)
    clock = FakeClock()
    stats = MigrationStats(clock)
    stats.start(RAM_256M)
    stats.begin_setup(300)
    clock.advance_ms(setup_time)
    stats.end_setup()
    stats.add_main_stream_bytes(total_bytes)
    clock.advance_ms(total_time - setup_time - (downtime or 0))
    stats.vm_stopped()
    clock.advance_ms(downtime or 0)
    stats.complete()
    snap = stats.snapshot()
    assert snap.mbps == mbps
    assert snap.total_time == total_time


def rec_window_mbps() -> list[float]:
    """Every window mbps in the transcripts' active/cancelling replies."""
    values: set[float] = set()
    for name in ("d_multifd_zstd.jsonl", "e_cancel.jsonl", "i_hmp.jsonl"):
        for line in (TRANSCRIPTS / name).read_text().splitlines():
            msg = json.loads(line).get("msg") or {}
            ret = msg.get("return")
            if isinstance(ret, dict) and ret.get("status") in ("active", "cancelling"):
                if "ram" in ret and ret["ram"]["mbps"]:
                    values.add(float(ret["ram"]["mbps"]))
    return sorted(values)


@pytest.mark.skipif(not TRANSCRIPTS.exists(), reason="reference transcripts not available")
def test_every_rec_window_mbps_is_reproduced_by_some_integer_window():
    """For each REC value there is a window of whole ms (>= BUFFER_DELAY) and a whole byte
    count for which our update() gives that float exactly: same formula, same operation
    order."""
    values = rec_window_mbps()
    assert len(values) >= 20
    for mbps in values:
        found = False
        for ms in range(BUFFER_DELAY_MS, 400):
            nbytes = round(mbps * ms * 1000 / 8)
            clock = FakeClock()
            stats = running(clock)
            stats.add_main_stream_bytes(nbytes)
            clock.advance_ms(ms)
            stats.update(300)
            if stats.snapshot().mbps == mbps:
                found = True
                break
        assert found, mbps


def test_ram_bytes_split_by_vm_running_and_transferred_identity():
    clock = FakeClock()
    stats = running(clock)
    stats.add_ram_bytes(20902, vm_running=True)
    stats.add_multifd_packet(PACKET_LEN, 128)
    stats.add_multifd_packet(PACKET_LEN, 0)  # a sync packet: header only
    stats.add_ram_bytes(18981, vm_running=False)
    snap = stats.snapshot()
    assert snap.precopy_bytes == 20902
    assert snap.downtime_bytes == 18981
    assert snap.postcopy_bytes == 0
    assert snap.multifd_bytes == 2 * PACKET_LEN + 128 * 4096  # uncompressed, 7.2 style
    # REC identity, true in every transcript reply: transferred = precopy+downtime+multifd
    assert snap.transferred == snap.precopy_bytes + snap.downtime_bytes + snap.multifd_bytes
    assert snap.main_stream_bytes == 20902 + 18981


def test_wire_bytes_are_separate_from_multifd_bytes():
    stats = running(FakeClock())
    stats.add_multifd_packet(PACKET_LEN, 128)
    stats.add_multifd_wire_bytes(PACKET_LEN + 4000)  # zstd made 512 KiB into 4000 bytes
    snap = stats.snapshot()
    assert snap.multifd_bytes == PACKET_LEN + 524288
    assert snap.multifd_wire_bytes == PACKET_LEN + 4000
    assert snap.transferred == snap.multifd_bytes


def test_normal_bytes_and_zero_pages():
    stats = running(FakeClock())
    stats.add_normal_pages(3327)
    stats.add_zero_pages(2321)
    snap = stats.snapshot()
    assert snap.normal_bytes == 13627392  # REC
    assert snap.duplicate == 2321


def test_start_zeroes_everything_for_a_new_migration():
    clock = FakeClock()
    stats = running(clock)
    stats.add_normal_pages(5)
    stats.add_multifd_packet(PACKET_LEN, 5)
    stats.bitmap_sync(3)
    clock.advance_ms(200)
    stats.update(300)
    stats.vm_stopped()
    stats.complete()
    stats.start(RAM_256M)
    snap = stats.snapshot()
    assert snap == StatsSnapshot(total=RAM_256M)


def test_counters_are_thread_safe():
    stats = running(FakeClock())
    n_threads, n_iter = 8, 2000
    barrier = threading.Barrier(n_threads)

    def channel() -> None:
        barrier.wait()
        for _ in range(n_iter):
            stats.add_multifd_packet(PACKET_LEN, 1)
            stats.add_normal_pages()
            stats.add_multifd_wire_bytes(10)

    threads = [threading.Thread(target=channel) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    total = n_threads * n_iter
    assert snap.multifd_bytes == total * (PACKET_LEN + 4096) == snap.transferred
    assert snap.normal == total and snap.multifd_wire_bytes == total * 10
