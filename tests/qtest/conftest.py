"""Fixtures shared by the end-to-end tests in tests/qtest."""

from __future__ import annotations

import pytest
from harness import Cluster


@pytest.fixture
async def cluster(tmp_path):
    """The processes a test starts, ended by PID (and their files removed) at teardown."""
    c = Cluster(tmp_path)
    yield c
    await c.close()
