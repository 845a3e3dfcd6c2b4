"""wait_for_quiet: polls the load with an injected clock, never sleeps for real."""

from __future__ import annotations

from migemu.tools.hostload import wait_for_quiet


class FakeHost:
    def __init__(self, loads: list[float]) -> None:
        self.loads = loads
        self.now = 0.0
        self.sleeps: list[float] = []

    def read_load(self) -> float:
        return self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def wait(host: FakeHost, **kw):
    return wait_for_quiet(read_load=host.read_load, clock=lambda: host.now, sleep=host.sleep, **kw)


def test_returns_at_once_on_a_quiet_host():
    host = FakeHost([0.05])
    r = wait(host, threshold=0.3, timeout_s=300)
    assert r.quiet and r.waited_s == 0 and host.sleeps == []
    assert "quiet" in r.describe() and "NOT" not in r.describe()


def test_waits_until_the_load_falls():
    host = FakeHost([2.0, 1.0, 0.5, 0.2])
    r = wait(host, threshold=0.3, timeout_s=300, poll_s=5)
    assert r.quiet and r.load == 0.2 and r.waited_s == 15 and host.sleeps == [5, 5, 5]


def test_gives_up_at_the_deadline_and_says_so():
    host = FakeHost([4.0])
    r = wait(host, threshold=0.3, timeout_s=12, poll_s=5)
    assert not r.quiet and r.waited_s == 12 and host.sleeps == [5, 5, 2]
    assert "NOT quiet" in r.describe() and "4.00" in r.describe()


def test_no_wait_reads_the_load_once():
    host = FakeHost([4.0])
    r = wait(host, threshold=0.3, timeout_s=0)
    assert not r.quiet and r.waited_s == 0 and host.sleeps == []
