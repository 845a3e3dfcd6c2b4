"""Support for the tests of migemu.testing: run pytest on users' test files in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
DOC = REPO / "docs" / "testing.md"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\s*```python\n(.*?)```", re.S)
OUTCOME = re.compile(r"(\d+) (passed|failed|skipped|errors?)")


def doc_examples() -> dict[str, str]:
    """The worked examples of docs/testing.md, by name, exactly as the doc shows them."""
    return {m.group(1): m.group(2) for m in EXAMPLE.finditer(DOC.read_text())}


def run_pytest(
    python: str, tests: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> tuple[dict[str, int], str]:
    """pytest in a subprocess, in ``tests`` (no project config: pytest-asyncio's strict
    mode); the outcome counts and the output."""
    proc = subprocess.run(
        [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=tests,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    out = proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    counts = {}
    for number, outcome in OUTCOME.findall(summary):
        counts["error" if outcome.startswith("error") else outcome] = int(number)
    return counts, out


PYTHON = sys.executable
