"""A small synchronous wrapper over ``migemu.testing`` for code without an event loop.

Test-library layer. ``SyncVM`` and ``SyncPair`` own one ``asyncio.Runner`` and run the async
API's calls to completion on it, so a plain ``def test_...`` (or a script) can write
``with SyncPair(method="zstd") as pair: pair.migrate(); pair.wait_for_status("completed")``.
Events are still recorded (``pair.source.events``) whenever a call runs the loop. Not for use
inside a running event loop: use the async API there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from migemu.testing.pair import MigrationPair
from migemu.testing.vm import VM

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def close(self) -> None:
        self._runner.close()


class SyncVM:
    """A started ``VM`` driven synchronously; ``.vm`` is the async object."""

    def __init__(self, vm: VM, loop: _Loop) -> None:
        self.vm = vm
        self._loop = loop

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.vm.events

    @property
    def pid(self) -> int:
        return self.vm.pid

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """Run one QMP command; its ``return`` value."""
        return self._loop.run(self.vm.cmd(name, args))

    def wait_status(
        self, statuses: str | Sequence[str], deadline_s: float | None = None
    ) -> dict[str, Any]:
        return self._loop.run(self.vm.wait_status(statuses, deadline_s))

    def wait_event(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        return self._loop.run(self.vm.wait_event(name, timeout))

    def wait_exit(self, deadline_s: float | None = None) -> int:
        return self._loop.run(self.vm.wait_exit(deadline_s))


class SyncPair:
    """``MigrationPair(**options)`` for synchronous code; use it as a context manager."""

    def __init__(self, **options: Any) -> None:
        self._loop = _Loop()
        self.pair = MigrationPair(**options)
        self._loop.run(self._start())
        self.source = SyncVM(self.pair.source, self._loop)
        self.destination = SyncVM(self.pair.destination, self._loop)

    async def _start(self) -> None:
        try:
            await self.pair.start()
        except BaseException:
            self._loop.close()
            raise

    def __enter__(self) -> SyncPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._loop.run(self.pair.close())
        finally:
            self._loop.close()

    def migrate(
        self,
        capabilities: Mapping[str, bool] | None = None,
        parameters: Mapping[str, Any] | None = None,
        *,
        uri: str | None = None,
    ) -> str:
        return self._loop.run(self.pair.migrate(capabilities, parameters, uri=uri))

    def wait_for_status(
        self, status: str | Sequence[str], timeout: float | None = None
    ) -> dict[str, Any]:
        return self._loop.run(self.pair.wait_for_status(status, timeout))

    def query_migrate(self) -> dict[str, Any]:
        return self._loop.run(self.pair.query_migrate())

    def cancel(self) -> None:
        self._loop.run(self.pair.cancel())

    def ensure_converge(self) -> None:
        self._loop.run(self.pair.ensure_converge())

    def ensure_non_converge(self) -> None:
        self._loop.run(self.pair.ensure_non_converge())

    def inject_fault(self, spec: str, *, on: str | None = None) -> dict[str, Any]:
        return self._loop.run(self.pair.inject_fault(spec, on=on))

    def restart_destination(self) -> SyncVM:
        self.destination = SyncVM(self._loop.run(self.pair.restart_destination()), self._loop)
        return self.destination

    def ram_equal(self) -> bool:
        return self.pair.ram_equal()
