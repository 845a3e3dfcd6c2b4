"""query-migrate's value: members per state (facts §4.4), schema order, types, and every
query-migrate reply of the real transcripts rebuilt byte for byte from its own numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from migemu.emulator.migration.info import (
    MIGRATION_INFO_MEMBERS,
    MIGRATION_STATS_MEMBERS,
    build_query_migrate,
    inet_socket_address,
    query_migrate,
    ram_stats,
    unix_socket_address,
)
from migemu.emulator.migration.state import (
    MigrationEvent,
    MigrationStateMachine,
    MigrationStatus,
    Side,
)
from migemu.emulator.migration.stats import MigrationStats, StatsSnapshot
from migemu.qapi.qjson.writer import dumps

S = MigrationStatus
TRANSCRIPTS = Path("/work/shared/reference/transcripts")
REC_FILES = ("d_multifd_zstd.jsonl", "e_cancel.jsonl", "i_hmp.jsonl")

SNAP = StatsSnapshot(
    transferred=13692710,
    remaining=245301248,
    total=268435456,
    duplicate=2321,
    normal=3327,
    dirty_pages_rate=7,
    mbps=0.0,
    dirty_sync_count=1,
    multifd_bytes=13671808,
    precopy_bytes=20902,
    setup_time=1,
    elapsed_time=54,
    total_time=1145,
    expected_downtime=300,
    downtime=44,
)

PROGRESS = {"status", "setup-time", "total-time", "expected-downtime", "ram"}
DONE = {"status", "setup-time", "total-time", "downtime", "ram"}
# populate_time_info of 7.2: expected-downtime in postcopy too (real QEMU 7.2 checked;
# "downtime replaces expected-downtime" is later versions)
POSTCOPY = PROGRESS
SOURCE_MEMBERS: dict[MigrationStatus, set[str]] = {
    S.NONE: set(),
    S.SETUP: {"status"},
    S.CANCELLING: PROGRESS,
    S.CANCELLED: {"status"},
    S.ACTIVE: PROGRESS,
    S.POSTCOPY_ACTIVE: POSTCOPY,
    S.POSTCOPY_PAUSED: POSTCOPY,
    S.POSTCOPY_RECOVER: POSTCOPY,
    S.COMPLETED: DONE,
    S.FAILED: {"status", "error-desc"},
    S.COLO: {"status"},
    S.PRE_SWITCHOVER: PROGRESS,
    S.DEVICE: PROGRESS,
    S.WAIT_UNPLUG: {"status"},
}


@pytest.mark.parametrize("status", list(MigrationStatus))
def test_source_members_per_state(status):
    info = build_query_migrate(source_status=status, stats=SNAP, error_desc="boom")
    assert set(info) == SOURCE_MEMBERS[status]
    assert list(info) == [m for m in MIGRATION_INFO_MEMBERS if m in info]
    if status is not S.NONE:
        assert info["status"] == status.value
    if "ram" in info:
        assert list(info["ram"]) == list(MIGRATION_STATS_MEMBERS)
        assert type(info["ram"]["mbps"]) is float
        for name, value in info["ram"].items():
            if name != "mbps":
                assert type(value) is int, name
    if status in (S.ACTIVE, S.CANCELLING):
        assert info["total-time"] == 54 and info["expected-downtime"] == 300
        assert info["setup-time"] == 1
        assert info["ram"]["remaining"] == 245301248 and info["ram"]["dirty-pages-rate"] == 7
    if status in (S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER):
        assert info["total-time"] == 54 and info["expected-downtime"] == 300
        assert info["ram"]["remaining"] == 245301248
    if status is S.COMPLETED:
        assert info["total-time"] == 1145 and info["downtime"] == 44
        assert info["ram"]["remaining"] == 0 and info["ram"]["dirty-pages-rate"] == 0


def test_failed_without_error_has_status_only():
    assert build_query_migrate(source_status=S.FAILED) == {"status": "failed"}


def test_no_stats_gives_zeros_not_an_error():
    info = build_query_migrate(source_status=S.ACTIVE)
    assert info["ram"]["total"] == 0 and info["ram"]["mbps"] == 0.0


def test_blocked_reasons_shown_in_any_state_including_none():
    assert build_query_migrate(blocked_reasons=["a device is in the way"]) == {
        "blocked-reasons": ["a device is in the way"]
    }
    info = build_query_migrate(source_status=S.SETUP, blocked_reasons=["x"])
    assert list(info) == ["status", "blocked-reasons"]


def test_cpu_throttle_percentage_only_with_ram():
    info = build_query_migrate(source_status=S.ACTIVE, stats=SNAP, cpu_throttle_percentage=20)
    assert info["cpu-throttle-percentage"] == 20
    assert list(info).index("cpu-throttle-percentage") == list(info).index("setup-time") + 1
    info = build_query_migrate(source_status=S.SETUP, cpu_throttle_percentage=20)
    assert info == {"status": "setup"}


def test_ram_stats_normal_bytes_and_skipped():
    ram = ram_stats(SNAP, S.ACTIVE)
    assert ram["normal-bytes"] == 3327 * 4096 and ram["skipped"] == 0


# -- destination ------------------------------------------------------------------------------

LISTENER = [inet_socket_address("127.0.0.1", 53785)]


def test_socket_address_inet_schema_order_and_port_string():
    assert list(LISTENER[0].items()) == [
        ("type", "inet"),
        ("host", "127.0.0.1"),
        ("port", "53785"),
        ("ipv4", True),
    ]
    assert inet_socket_address("::1", "4444", ipv6=True) == {
        "type": "inet",
        "host": "::1",
        "port": "4444",
        "ipv6": True,
    }
    assert unix_socket_address("/tmp/m.sock") == {"type": "unix", "path": "/tmp/m.sock"}


def test_socket_address_serialises_like_rec():
    # facts §4.4 / §9.5: REC prints it as {"port", "ipv4", "host", "type"}
    assert (
        dumps(LISTENER[0]) == '{"port": "53785", "ipv4": true, "host": "127.0.0.1", "type": "inet"}'
    )


def test_destination_views():
    # before migrate-incoming; after it (state stays none); active; completed (list gone)
    assert build_query_migrate() == {}
    assert build_query_migrate(socket_address=LISTENER) == {"socket-address": LISTENER}
    assert build_query_migrate(destination_status=S.ACTIVE, socket_address=LISTENER) == {
        "status": "active",
        "socket-address": LISTENER,
    }
    assert build_query_migrate(destination_status=S.COMPLETED) == {"status": "completed"}


def test_source_status_wins_over_destination_status():
    # a destination that later migrates on: fill_source overwrites status
    info = build_query_migrate(
        source_status=S.SETUP, destination_status=S.COMPLETED, socket_address=LISTENER
    )
    assert info == {"status": "setup", "socket-address": LISTENER}
    info = build_query_migrate(source_status=S.NONE, destination_status=S.FAILED)
    assert info == {"status": "failed"}


def test_socket_address_is_copied():
    info = build_query_migrate(socket_address=LISTENER)
    info["socket-address"][0]["host"] = "changed"
    assert LISTENER[0]["host"] == "127.0.0.1"


# -- the live objects ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.ns = 5_000_000_000

    def __call__(self) -> int:
        return self.ns


def test_query_migrate_over_a_source_run():
    clock = Clock()
    sm = MigrationStateMachine(Side.SOURCE, lambda name, data: None)
    stats = MigrationStats(clock)
    assert query_migrate(sm, stats) == {}
    sm.start()
    stats.start(268435456)
    assert query_migrate(sm, stats) == {"status": "setup"}
    stats.begin_setup(300)
    stats.end_setup()
    sm.handle(MigrationEvent.SETUP_DONE)
    clock.ns += 54_000_000
    info = query_migrate(sm, stats)
    assert info["total-time"] == 54 and info["expected-downtime"] == 300
    stats.vm_stopped()
    sm.handle(MigrationEvent.COMPLETE)
    assert query_migrate(sm, stats)["total-time"] == 0  # REC race, before complete()
    clock.ns += 10_000_000
    stats.complete()
    info = query_migrate(sm, stats)
    assert info["total-time"] == 64 and info["downtime"] == 10


def test_query_migrate_failed_shows_first_error():
    sm = MigrationStateMachine(Side.SOURCE, lambda name, data: None)
    sm.start()
    sm.fail("Failed to connect to '127.0.0.1:53753': Connection refused")
    sm.fail("later")
    assert query_migrate(sm, MigrationStats(Clock())) == {
        "status": "failed",
        "error-desc": "Failed to connect to '127.0.0.1:53753': Connection refused",
    }


def test_query_migrate_destination_machine():
    dst = MigrationStateMachine(Side.DESTINATION, lambda name, data: None)
    dst.handle(MigrationEvent.INCOMING_START)
    assert query_migrate(None, None, dst, LISTENER) == {"socket-address": LISTENER}
    dst.handle(MigrationEvent.CHANNELS_CONNECTED)
    assert query_migrate(None, None, dst, LISTENER)["status"] == "active"


# -- every real reply -----------------------------------------------------------------------------


def rec_replies() -> list[tuple[str, str, dict[str, Any], str]]:
    """(file, monitor, return value, raw line) of every query-migrate reply."""
    out = []
    for name in REC_FILES:
        pending: dict[str, str] = {}
        for line in (TRANSCRIPTS / name).read_text().splitlines():
            record = json.loads(line)
            mon, direction, msg = record["mon"], record["dir"], record.get("msg")
            if direction == "c2s":
                pending[mon] = msg.get("execute")
            elif direction == "s2c" and pending.get(mon) == "query-migrate" and "return" in msg:
                out.append((name, mon, msg["return"], record["raw"]))
                pending[mon] = None
    return out


def snapshot_from_rec(ret: dict[str, Any]) -> StatsSnapshot:
    ram = ret.get("ram", {})
    fields = {name.replace("-", "_"): value for name, value in ram.items()}
    for derived in ("normal_bytes", "skipped"):
        fields.pop(derived, None)
    fields["mbps"] = float(fields.get("mbps", 0.0))
    status = ret.get("status")
    if status == "completed":
        # prove completed uses the stored total-time and zeroes these two
        fields.update(total_time=ret["total-time"], elapsed_time=987654)
        fields.update(remaining=4096, dirty_pages_rate=123)
    else:
        fields.update(elapsed_time=ret.get("total-time", 0), total_time=0)
    return StatsSnapshot(
        **fields,
        setup_time=ret.get("setup-time", 0),
        expected_downtime=ret.get("expected-downtime", 300),
        downtime=ret.get("downtime", 0),
    )


@pytest.mark.skipif(not TRANSCRIPTS.exists(), reason="reference transcripts not available")
def test_every_rec_query_migrate_reply_rebuilt_byte_for_byte():
    replies = rec_replies()
    seen_states: set[tuple[str, str]] = set()
    for name, mon, ret, raw in replies:
        side = "dst" if mon.startswith("dst") else "src"
        status = S(ret["status"]) if "status" in ret else S.NONE
        seen_states.add((side, status.value))
        if side == "src":
            ours = build_query_migrate(
                source_status=status,
                stats=snapshot_from_rec(ret),
                error_desc=ret.get("error-desc"),
            )
        else:
            listeners = None
            if "socket-address" in ret:
                listeners = [
                    inet_socket_address(a["host"], int(a["port"]), ipv6=a.get("ipv6", False))
                    for a in ret["socket-address"]
                ]
            ours = build_query_migrate(destination_status=status, socket_address=listeners)
        assert set(ours) == set(ret), (name, mon, ret)
        assert ours == ret, (name, mon)
        assert dumps({"return": ours}) + "\r\n" == raw, (name, mon)
    assert {
        ("src", "none"),
        ("src", "setup"),
        ("src", "active"),
        ("src", "cancelling"),
        ("src", "cancelled"),
        ("src", "completed"),
        ("src", "failed"),
        ("dst", "none"),
        ("dst", "active"),
        ("dst", "completed"),
    } <= seen_states


def test_destination_blocktime_only_once_completed():
    for status in MigrationStatus:
        info = build_query_migrate(destination_status=status, postcopy_blocktime=(7, [7]))
        if status is S.COMPLETED:
            assert info == {
                "postcopy-blocktime": 7,
                "status": "completed",
                "postcopy-vcpu-blocktime": [7],
            }
        else:
            assert "postcopy-blocktime" not in info
