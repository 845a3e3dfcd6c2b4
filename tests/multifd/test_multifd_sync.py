"""SYNC bookkeeping: the sender's owed SYNCs and the receiver's EOS barrier."""

from __future__ import annotations

import pytest

from migemu.multifd import PacketNumbers, ProtocolError, RecvSync, SendSync


def test_packet_numbers_are_global() -> None:
    numbers = PacketNumbers()
    assert [numbers.next() for _ in range(3)] == [0, 1, 2]


def test_send_sync_flags_each_channel_once() -> None:
    sync = SendSync(2)
    assert sync.complete
    sync.request()
    assert not sync.complete
    assert sync.take_flag(0) and not sync.take_flag(0)
    sync.sent(0)
    assert not sync.complete
    assert sync.take_flag(1)
    sync.sent(1)
    assert sync.complete and sync.syncs == 1
    assert not sync.take_flag(1)


def test_send_sync_refuses_overlapping_sync_points() -> None:
    sync = SendSync(2)
    sync.request()
    with pytest.raises(RuntimeError):
        sync.request()


def test_recv_barrier_needs_main_and_every_channel() -> None:
    sync = RecvSync(2)
    sync.channel_synced(1, 7)
    assert not sync.ready and sync.release() == []
    sync.main_eos()
    assert sync.waiting_for() == [0] and not sync.ready
    sync.channel_synced(0, 6)
    assert sync.ready
    assert sync.release() == [0, 1]
    assert sync.epoch == 1 and sync.highest_packet_num == 7
    assert not sync.main_waiting and sync.waiting_for() == [0, 1]


def test_recv_main_first_then_channels() -> None:
    sync = RecvSync(1)
    sync.main_eos()
    assert sync.main_waiting and not sync.ready
    sync.channel_synced(0, 0)
    assert sync.release() == [0]


def test_recv_second_sync_before_release_is_an_error() -> None:
    sync = RecvSync(2)
    sync.channel_synced(0, 1)
    with pytest.raises(ProtocolError):
        sync.channel_synced(0, 3)
    with pytest.raises(ValueError):
        sync.channel_synced(5, 3)
