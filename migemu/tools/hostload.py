"""Waiting for a quiet host before a benchmark measures anything (tools layer).

A loaded host slows real QEMU more than migemu and makes side-by-side ratios look better
than they are, so a comparison is only quoted from a quiet host. ``wait_for_quiet`` polls
the 1-minute load average until it is below a threshold or a deadline passes, and returns
what it saw; the benchmark records that (and the load at every run) in its JSON and says
so when the host never became quiet. The load reader, the clock and the sleep are injected,
so the waiting logic is tested without a loaded machine or real time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

QUIET_LOAD = 0.3  # 1-minute load average below which a 2-CPU host counts as quiet
QUIET_WAIT_S = 300.0
POLL_S = 5.0


@dataclass(frozen=True)
class QuietResult:
    threshold: float
    quiet: bool  # the load was below the threshold when the wait ended
    waited_s: float
    load: float  # the last 1-minute load average read

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.quiet:
            return (
                f"host quiet (load {self.load:.2f} < {self.threshold}) after {self.waited_s:.0f} s"
            )
        return (
            f"host NOT quiet: load {self.load:.2f} >= {self.threshold} after waiting "
            f"{self.waited_s:.0f} s; ratios measured now favour neither side reliably"
        )


def wait_for_quiet(
    threshold: float = QUIET_LOAD,
    timeout_s: float = QUIET_WAIT_S,
    *,
    poll_s: float = POLL_S,
    read_load: Callable[[], float] = lambda: os.getloadavg()[0],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> QuietResult:
    """Poll the load until it is below ``threshold`` or ``timeout_s`` has passed."""
    start = clock()
    while True:
        load = read_load()
        waited = clock() - start
        if load < threshold:
            return QuietResult(threshold, True, waited, load)
        if waited >= timeout_s:
            return QuietResult(threshold, False, waited, load)
        sleep(min(poll_s, max(0.0, timeout_s - waited)))
