"""Recorder scenarios (tools layer): name -> list of steps, one focused session each.

Re-record every transcript with
``python -m migemu.tools.record all --out tests/fixtures/transcripts``.
"""

from __future__ import annotations

from migemu.tools.scenarios import capabilities, hmp, parameters, protocol, vm
from migemu.tools.scenarios.steps import Step

SCENARIOS: dict[str, list[Step]] = {
    **protocol.SCENARIOS,
    **parameters.SCENARIOS,
    **capabilities.SCENARIOS,
    **vm.SCENARIOS,
    **hmp.SCENARIOS,
}

__all__ = ["SCENARIOS", "Step"]
