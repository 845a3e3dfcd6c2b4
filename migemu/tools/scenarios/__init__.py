"""Recorder scenarios (tools layer): name -> list of steps, one focused session each.

Re-record every transcript with
``python -m migemu.tools.record all --out tests/fixtures/transcripts``; add ``--check`` to
record again and diff against the committed files instead (real QEMU is deterministic on
all of them except event timestamps). ``tests/qtest/test_replay.py`` replays each one
against real QEMU and migemu. A scenario's module says what it covers: ``protocol``
(qmp_*), ``parameters`` (params_*), ``capabilities`` (caps_*), ``vm`` (vm_*), ``hmp``.
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
