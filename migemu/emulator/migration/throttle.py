"""auto-converge: throttling the guest's vCPU when precopy does not converge (emulator layer).

QEMU 7.2 (``migration/ram.c``): at the end of each dirty-rate period (a bitmap sync more
than a second after the period began), if the bytes the guest dirtied in the period exceed
``throttle-trigger-threshold`` percent of the bytes transferred in it, a counter goes up;
the second time, it is reset and the guest is throttled down (``mig_throttle_guest_down``):
to ``cpu-throttle-initial`` if no throttle is active, else up by ``cpu-throttle-increment``
(with ``cpu-throttle-tailslow``, by no more than what would bring the dirty rate to the
threshold), never above ``max-cpu-throttle``. The migration's end stops the throttle.

``CpuThrottle`` is the process's throttle (``cpu_throttle_set``/``_get_percentage``/
``_stop``); listeners (the guest workload) follow it. ``AutoConverge`` is the per-migration
decision, sans-IO: numbers in, a new percentage (or ``None``) out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

CPU_THROTTLE_PCT_MIN = 1
CPU_THROTTLE_PCT_MAX = 99
# The vCPU runs this long, then sleeps pct/(100-pct) of it (cpu-throttle.c).
CPU_THROTTLE_TIMESLICE_S = 0.010


class CpuThrottle:
    """The vCPU throttle of one machine; 0 means inactive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pct = 0
        self._listeners: list[Callable[[int], None]] = []

    @property
    def percentage(self) -> int:
        return self._pct

    @property
    def active(self) -> bool:
        return self._pct > 0

    def subscribe(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)
        listener(self._pct)

    def unsubscribe(self, listener: Callable[[int], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def set(self, pct: int) -> None:
        """cpu_throttle_set: clamped to 1..99."""
        self._apply(max(CPU_THROTTLE_PCT_MIN, min(pct, CPU_THROTTLE_PCT_MAX)))

    def stop(self) -> None:
        self._apply(0)

    def _apply(self, pct: int) -> None:
        with self._lock:
            changed = pct != self._pct
            self._pct = pct
            listeners = list(self._listeners)
        if changed:
            for listener in listeners:
                listener(pct)


class AutoConverge:
    """migration_trigger_throttle + mig_throttle_guest_down for one migration."""

    def __init__(self, throttle: CpuThrottle) -> None:
        self.throttle = throttle
        self.dirty_rate_high_cnt = 0

    def period_ended(
        self, bytes_dirty_period: int, bytes_xfer_period: int, params: Mapping[str, Any]
    ) -> int | None:
        """One period's numbers; returns the new throttle percentage if it changed."""
        threshold = bytes_xfer_period * int(params["throttle-trigger-threshold"]) // 100
        if bytes_dirty_period > threshold:
            self.dirty_rate_high_cnt += 1
            if self.dirty_rate_high_cnt >= 2:
                self.dirty_rate_high_cnt = 0
                return self._guest_down(bytes_dirty_period, threshold, params)
        return None

    def _guest_down(self, bytes_dirty: int, threshold: int, params: Mapping[str, Any]) -> int:
        now = self.throttle.percentage
        if not self.throttle.active:
            self.throttle.set(int(params["cpu-throttle-initial"]))
        else:
            increment = int(params["cpu-throttle-increment"])
            if params.get("cpu-throttle-tailslow"):
                cpu_now = 100 - now
                cpu_ideal = int(cpu_now * (threshold * 1.0 / bytes_dirty))
                inc = min(cpu_now - cpu_ideal, increment)
            else:
                inc = increment
            self.throttle.set(min(now + inc, int(params["max-cpu-throttle"])))
        return self.throttle.percentage
