"""The ``query-migrate`` view: QEMU 7.2's ``MigrationInfo`` for every state (emulator layer).

A pure function of the two status machines' states, a ``StatsSnapshot`` and the incoming
listener addresses, following ``qmp_query_migrate`` in 7.2: the destination part is filled
first (status unless ``none``, ``socket-address`` while the incoming side listens), then the
source part, whose status wins unless it is ``none`` (facts §4.4). Members come out in QAPI
schema order, which is QEMU's insertion order; the JSON writer turns that into QDict hash
order. ``mbps`` is a float, every other number an int.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from migemu.emulator.migration.state import MigrationStateMachine, MigrationStatus
from migemu.emulator.migration.stats import MigrationStats, StatsSnapshot

# QAPI schema order of MigrationInfo and MigrationStats (7.2).
MIGRATION_INFO_MEMBERS: tuple[str, ...] = (
    "status",
    "ram",
    "disk",
    "vfio",
    "xbzrle-cache",
    "total-time",
    "expected-downtime",
    "downtime",
    "setup-time",
    "cpu-throttle-percentage",
    "error-desc",
    "blocked-reasons",
    "postcopy-blocktime",
    "postcopy-vcpu-blocktime",
    "compression",
    "socket-address",
)

MIGRATION_STATS_MEMBERS: tuple[str, ...] = (
    "transferred",
    "remaining",
    "total",
    "duplicate",
    "skipped",
    "normal",
    "normal-bytes",
    "dirty-pages-rate",
    "mbps",
    "dirty-sync-count",
    "postcopy-requests",
    "page-size",
    "multifd-bytes",
    "pages-per-second",
    "precopy-bytes",
    "downtime-bytes",
    "postcopy-bytes",
    "dirty-sync-missed-zero-copy",
)

S = MigrationStatus

# fill_source_migration_info(): which members each source state shows.
_SOURCE_WITH_PROGRESS = frozenset(
    {
        S.ACTIVE,
        S.CANCELLING,
        S.POSTCOPY_ACTIVE,
        S.PRE_SWITCHOVER,
        S.DEVICE,
        S.POSTCOPY_PAUSED,
        S.POSTCOPY_RECOVER,
    }
)

del S


def ram_stats(snapshot: StatsSnapshot, status: MigrationStatus) -> dict[str, Any]:
    """``MigrationStats`` (populate_ram_info): once completed, ``remaining`` and
    ``dirty-pages-rate`` are not filled in and show 0."""
    completed = status is MigrationStatus.COMPLETED
    return {
        "transferred": snapshot.transferred,
        "remaining": 0 if completed else snapshot.remaining,
        "total": snapshot.total,
        "duplicate": snapshot.duplicate,
        "skipped": snapshot.skipped,
        "normal": snapshot.normal,
        "normal-bytes": snapshot.normal_bytes,
        "dirty-pages-rate": 0 if completed else snapshot.dirty_pages_rate,
        "mbps": float(snapshot.mbps),
        "dirty-sync-count": snapshot.dirty_sync_count,
        "postcopy-requests": snapshot.postcopy_requests,
        "page-size": snapshot.page_size,
        "multifd-bytes": snapshot.multifd_bytes,
        "pages-per-second": snapshot.pages_per_second,
        "precopy-bytes": snapshot.precopy_bytes,
        "downtime-bytes": snapshot.downtime_bytes,
        "postcopy-bytes": snapshot.postcopy_bytes,
        "dirty-sync-missed-zero-copy": snapshot.dirty_sync_missed_zero_copy,
    }


def inet_socket_address(host: str, port: int | str, *, ipv6: bool = False) -> dict[str, Any]:
    """A listener's address as 7.2 reports it (socket_sockaddr_to_address_inet): numeric
    host, the port as a *string*, and ``ipv4: true`` or ``ipv6: true`` by family."""
    address: dict[str, Any] = {"type": "inet", "host": host, "port": str(port)}
    address["ipv6" if ipv6 else "ipv4"] = True
    return address


def unix_socket_address(path: str) -> dict[str, Any]:
    """A unix listener's address (socket_sockaddr_to_address_unix), path only."""
    return {"type": "unix", "path": path}


def build_query_migrate(
    *,
    source_status: MigrationStatus = MigrationStatus.NONE,
    stats: StatsSnapshot | None = None,
    error_desc: str | None = None,
    destination_status: MigrationStatus = MigrationStatus.NONE,
    socket_address: Sequence[Mapping[str, Any]] | None = None,
    blocked_reasons: Sequence[str] = (),
    cpu_throttle_percentage: int | None = None,
    postcopy_blocktime: tuple[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """``query-migrate``'s return value.

    Source, by state: none -> nothing (``{}``); setup, cancelled, wait-unplug, colo ->
    status; active, cancelling, pre-switchover, device, postcopy-* -> status, setup-time,
    total-time (time since start), expected-downtime, ram; completed -> status, setup-time,
    total-time, downtime, ram (as stored by MigrationStats.complete(): 0 until then);
    failed -> status and error-desc if one was recorded. ``blocked-reasons`` whenever
    non-empty, ``cpu-throttle-percentage`` with ram when the throttle is active.

    Destination: status unless none, and ``socket-address`` while the caller still passes
    the listener list (QEMU frees it when the incoming side is torn down at completion).
    """
    info: dict[str, Any] = {}
    # fill_destination_migration_info()
    if socket_address is not None:
        info["socket-address"] = [dict(address) for address in socket_address]
    if destination_status is not MigrationStatus.NONE:
        info["status"] = destination_status.value
    if destination_status is MigrationStatus.COMPLETED and postcopy_blocktime is not None:
        # fill_destination_postcopy_migration_info(): only once completed
        info["postcopy-blocktime"] = postcopy_blocktime[0]
        info["postcopy-vcpu-blocktime"] = list(postcopy_blocktime[1])
    # fill_source_migration_info()
    if blocked_reasons:
        info["blocked-reasons"] = list(blocked_reasons)
    status = source_status
    if status is not MigrationStatus.NONE:
        info["status"] = status.value
    snapshot = stats if stats is not None else StatsSnapshot()
    if status in _SOURCE_WITH_PROGRESS or status is MigrationStatus.COMPLETED:
        info["setup-time"] = snapshot.setup_time
        if status is MigrationStatus.COMPLETED:
            info["total-time"] = snapshot.total_time
            info["downtime"] = snapshot.downtime
        else:
            info["total-time"] = snapshot.elapsed_time
            # 7.2 shows expected-downtime in postcopy too (populate_time_info; real 7.2
            # checked: only later versions show downtime there)
            info["expected-downtime"] = snapshot.expected_downtime
        info["ram"] = ram_stats(snapshot, status)
        if cpu_throttle_percentage is not None:
            info["cpu-throttle-percentage"] = cpu_throttle_percentage
    elif status is MigrationStatus.FAILED and error_desc is not None:
        info["error-desc"] = error_desc
    return {name: info[name] for name in MIGRATION_INFO_MEMBERS if name in info}


def query_migrate(
    source: MigrationStateMachine | None,
    stats: MigrationStats | None,
    destination: MigrationStateMachine | None = None,
    socket_address: Sequence[Mapping[str, Any]] | None = None,
    blocked_reasons: Sequence[str] = (),
    postcopy_blocktime: tuple[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """``build_query_migrate`` over the live objects, read once each."""
    return build_query_migrate(
        source_status=source.status if source is not None else MigrationStatus.NONE,
        stats=stats.snapshot() if stats is not None else None,
        error_desc=source.error_desc if source is not None else None,
        destination_status=(
            destination.status if destination is not None else MigrationStatus.NONE
        ),
        socket_address=socket_address,
        blocked_reasons=blocked_reasons,
        postcopy_blocktime=postcopy_blocktime,
    )
