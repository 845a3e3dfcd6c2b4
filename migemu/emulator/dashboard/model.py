"""What the dashboard knows, and its Prometheus text: plain synchronous state (emulator layer).

``DashboardModel`` keeps the latest answers to the queries the page shows (run state,
query-migrate, parameters, capabilities), the event log and the chart's samples of the
current migration. It does no IO: the app feeds it query results and events, and reads
snapshots and ``/metrics`` text out of it. ``ACTIVE_STATUSES`` decides when to poll.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

from migemu.emulator.events import Event

EVENT_LOG_LEN = 200
SAMPLES_LEN = 3600  # at 4 samples/s: 15 minutes of chart
# query-migrate statuses during which numbers move: poll while one of these.
ACTIVE_STATUSES = frozenset(
    {
        "setup",
        "active",
        "pre-switchover",
        "device",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "cancelling",
        "wait-unplug",
        "colo",
    }
)
# Events that change what the page shows (others are only logged).
MIGRATION_EVENTS = frozenset({"MIGRATION", "MIGRATION_PASS"})
RUNSTATE_EVENTS = frozenset({"STOP", "RESUME", "SHUTDOWN", "RESET", "SUSPEND", "WAKEUP"})

# (query-migrate "ram" member, metric name, type, help). Counters count within one migration
# and restart at the next one, which Prometheus reads as a counter reset.
RAM_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("transferred", "ram_transferred_bytes", "counter", "Bytes sent so far"),
    ("remaining", "ram_remaining_bytes", "gauge", "Bytes still to send"),
    ("total", "ram_total_bytes", "gauge", "Guest RAM size"),
    ("duplicate", "ram_duplicate_pages", "counter", "Zero pages sent as flags only"),
    ("normal", "ram_normal_pages", "counter", "Pages sent in full"),
    ("normal-bytes", "ram_normal_bytes", "counter", "Bytes of pages sent in full"),
    ("dirty-pages-rate", "ram_dirty_pages_rate", "gauge", "Pages dirtied per second"),
    ("mbps", "ram_mbps", "gauge", "Throughput in megabits per second"),
    ("dirty-sync-count", "ram_dirty_sync_count", "counter", "Dirty bitmap syncs (passes)"),
    ("multifd-bytes", "ram_multifd_bytes", "counter", "Bytes sent on multifd channels"),
    ("pages-per-second", "ram_pages_per_second", "gauge", "Pages sent per second"),
    ("precopy-bytes", "ram_precopy_bytes", "counter", "Bytes sent during precopy"),
    ("downtime-bytes", "ram_downtime_bytes", "counter", "Bytes sent while stopped"),
    ("postcopy-bytes", "ram_postcopy_bytes", "counter", "Bytes sent during postcopy"),
)
TIME_METRICS: tuple[tuple[str, str, str], ...] = (
    ("total-time", "total_time_ms", "Milliseconds since the migration started"),
    ("setup-time", "setup_time_ms", "Milliseconds spent in setup"),
    ("expected-downtime", "expected_downtime_ms", "Expected downtime in milliseconds"),
    ("downtime", "downtime_ms", "Downtime of the completed migration in milliseconds"),
)
PREFIX = "migemu_"


def sample_of(info: dict[str, Any], now_s: float) -> dict[str, Any] | None:
    """One chart point from a query-migrate answer (None when it has no RAM numbers)."""
    ram = info.get("ram")
    if not isinstance(ram, dict):
        return None
    return {
        "t": now_s,
        "status": info.get("status"),
        "mbps": ram.get("mbps", 0),
        "remaining": ram.get("remaining", 0),
        "transferred": ram.get("transferred", 0),
        "total": ram.get("total", 0),
    }


class DashboardModel:
    """The latest view of one instance."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.migration: dict[str, Any] = {"status": "none"}
        self.parameters: dict[str, Any] = {}
        self.capabilities: list[dict[str, Any]] = []
        self.identity: dict[str, Any] = {}  # label, name, version
        self.events: deque[Event] = deque(maxlen=EVENT_LOG_LEN)
        self.event_counts: Counter[str] = Counter()
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES_LEN)
        self.migrations_seen = 0

    @property
    def migration_status(self) -> str:
        return str(self.migration.get("status", "none"))

    @property
    def active(self) -> bool:
        return self.migration_status in ACTIVE_STATUSES

    @property
    def events_enabled(self) -> bool:
        """The ``events`` capability: without it QEMU sends no MIGRATION events."""
        return any(c.get("capability") == "events" and c.get("state") for c in self.capabilities)

    def record_event(self, event: Event) -> None:
        self.events.append(event)
        self.event_counts[str(event.get("event"))] += 1

    def record_migration(self, info: dict[str, Any], now_s: float) -> dict[str, Any] | None:
        """Take a query-migrate answer; returns the chart point it added, if any."""
        was_active = self.active
        self.migration = info
        sample = sample_of(info, now_s)
        status = self.migration_status
        if status in ACTIVE_STATUSES and not was_active:
            self.samples.clear()  # a new migration: a new chart
            self.migrations_seen += 1
        if sample is None or not (status in ACTIVE_STATUSES or was_active):
            return None
        self.samples.append(sample)
        return sample

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as one JSON-able object."""
        return {
            "identity": self.identity,
            "status": self.status,
            "migration": self.migration,
            "parameters": self.parameters,
            "capabilities": self.capabilities,
            "events": list(self.events),
            "samples": list(self.samples),
        }


def _number(value: object) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return None


def _label(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{text}"'


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {PREFIX}{name} {help_text}")
        self.lines.append(f"# TYPE {PREFIX}{name} {kind}")

    def sample(self, name: str, value: str, labels: dict[str, object] | None = None) -> None:
        text = ",".join(f"{k}={_label(v)}" for k, v in (labels or {}).items())
        labelled = f"{PREFIX}{name}{{{text}}}" if text else f"{PREFIX}{name}"
        self.lines.append(f"{labelled} {value}")


def render_metrics(model: DashboardModel) -> str:
    """Prometheus text exposition format (version 0.0.4) of the model."""
    w = _Writer()
    run_status = model.status.get("status")
    w.family("vm_running", "gauge", "1 while the guest runs")
    w.sample("vm_running", "1" if model.status.get("running") else "0")
    if run_status is not None:
        w.family("vm_status", "gauge", "The run state (query-status), 1 for the current one")
        w.sample("vm_status", "1", {"status": run_status})
    info = model.migration
    w.family("migration_status", "gauge", "The migration status (query-migrate), 1 for current")
    w.sample("migration_status", "1", {"status": model.migration_status})
    w.family("migration_active", "gauge", "1 while a migration is in progress")
    w.sample("migration_active", "1" if model.active else "0")
    for key, name, help_text in TIME_METRICS:
        value = _number(info.get(key))
        if value is not None:
            w.family(f"migration_{name}", "gauge", help_text)
            w.sample(f"migration_{name}", value)
    ram = info.get("ram")
    if isinstance(ram, dict):
        for key, name, kind, help_text in RAM_METRICS:
            value = _number(ram.get(key))
            if value is not None:
                metric = f"migration_{name}" + ("_total" if kind == "counter" else "")
                w.family(metric, kind, help_text)
                w.sample(metric, value)
    params = [(k, _number(v)) for k, v in model.parameters.items()]
    params = [(k, v) for k, v in params if v is not None]
    if params:
        w.family("migration_parameter", "gauge", "Numeric migration parameters")
        for key, value in params:
            assert value is not None
            w.sample("migration_parameter", value, {"parameter": key})
    if model.capabilities:
        w.family("migration_capability", "gauge", "Migration capabilities, 1 when on")
        for cap in model.capabilities:
            state = "1" if cap.get("state") else "0"
            w.sample("migration_capability", state, {"capability": cap.get("capability")})
    w.family("migration_starts_total", "counter", "Migrations seen starting by the dashboard")
    w.sample("migration_starts_total", str(model.migrations_seen))
    w.family("events_total", "counter", "QMP events seen by the dashboard, by name")
    for name, count in sorted(model.event_counts.items()):
        w.sample("events_total", str(count), {"event": name})
    return "\n".join(w.lines) + "\n"
