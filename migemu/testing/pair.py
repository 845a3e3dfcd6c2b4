"""A migration pair: a source and a destination VM and the migration between them.

Test-library layer. ``MigrationPair`` starts a source (its RAM filled with a deterministic
realistic image) and a destination (``-incoming defer``), both with QMP on unix sockets, and
offers what QEMU's migration qtest has in C (``migration-helpers.c``): start a migration with
the same capabilities and parameters on both sides, wait for a source status (a ``failed`` not
asked for raises with its ``error-desc``), make the migration converge or not
(``migrate_ensure_converge``/``migrate_ensure_non_converge``: QEMU's values), inject a
migemu fault, and compare the two RAM files.
"""

from __future__ import annotations

import filecmp
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from migemu.testing.errors import MigrationTimeoutError, UnsupportedByQEMU, VMStateError
from migemu.testing.vm import (
    DEFAULT_TIMEOUT_S,
    TERMINAL_STATUSES,
    VM,
    check_backend,
    check_fault,
    check_profile,
)

# QEMU 7.2 tests/qtest/migration-test.c: "Can't converge with 1ms downtime + 30 mbs
# bandwidth limit" / "Should converge with 30s downtime + 1 gbs bandwidth limit".
NON_CONVERGE = {"max-bandwidth": 30 * 1000 * 1000, "downtime-limit": 1}
CONVERGE = {"max-bandwidth": 1000 * 1000 * 1000, "downtime-limit": 30 * 1000}
TRANSPORTS = ("unix", "tcp")
METHODS = ("none", "zlib", "zstd")
# Faults that act in the destination process; every other kind acts in the source.
DESTINATION_FAULTS = ("dst-exit",)


def _capabilities(
    capabilities: Mapping[str, bool] | Iterable[Mapping[str, Any]] | None,
) -> dict[str, bool]:
    if capabilities is None:
        return {}
    if isinstance(capabilities, Mapping):
        return dict(capabilities)
    return {c["capability"]: c["state"] for c in capabilities}


def fault_side(spec: str) -> str:
    return "destination" if spec.split(",")[0].strip() in DESTINATION_FAULTS else "source"


class MigrationPair:
    """Source + destination. ``await pair.start()`` (or ``async with``), then
    ``await pair.migrate(...)`` and ``await pair.wait_for_status("completed")``.

    ``guest`` (a migemu workload) and ``faults`` apply to the source (a ``dst-exit`` fault to
    the destination); ``source_args``/``destination_args`` are extra argv. ``transport`` is
    ``"unix"`` or ``"tcp"`` (loopback). ``method`` (``"none"``, ``"zlib"``, ``"zstd"``) turns
    multifd on with that compression in every ``migrate()`` unless it says otherwise.
    """

    def __init__(
        self,
        *,
        profile: str = "7.2",
        memory: str | int = "64M",
        guest: str | None = None,
        faults: Iterable[str] = (),
        source_args: Sequence[str] = (),
        destination_args: Sequence[str] = (),
        transport: str = "unix",
        method: str | None = None,
        image: int | None = 1,
        backend: str = "migemu",
        workdir: Path | str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport={transport!r}: expected one of {', '.join(TRANSPORTS)}")
        if method is not None and method not in METHODS:
            raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)} or None")
        self.profile = check_profile(profile)
        self.backend = check_backend(backend)
        self.memory = memory
        self.transport = transport
        self.method = method
        self.timeout = timeout
        faults = [check_fault(f) for f in faults]
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self._destination_args = list(destination_args)
        self._destination_faults = [f for f in faults if fault_side(f) == "destination"]
        self._generation = 0
        self._old_destinations: list[VM] = []
        self.source = VM(
            "source",
            profile=profile,
            memory=memory,
            guest=guest,
            faults=[f for f in faults if fault_side(f) == "source"],
            args=source_args,
            image=image,
            backend=backend,
            timeout=timeout,
        )
        self.destination = self._new_destination()
        self._started = False
        self._closed = False
        self.uri: str | None = None

    def _new_destination(self) -> VM:
        name = "destination" if self._generation == 0 else f"destination{self._generation}"
        self._generation += 1
        return VM(
            name,
            profile=self.profile,
            memory=self.memory,
            faults=self._destination_faults,
            args=self._destination_args,
            incoming="defer",
            backend=self.backend,
            timeout=self.timeout,
        )

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise VMStateError("migration pair: not started")
        return self._workdir

    async def start(self) -> MigrationPair:
        if self._closed:
            raise VMStateError("migration pair: closed; it cannot be started again")
        if self._started:
            raise VMStateError("migration pair: already started")
        self._started = True
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="migemu-pair-"))
        self.source.use_workdir(self._workdir)
        self.destination.use_workdir(self._workdir)
        try:
            await self.source.start()
            await self.destination.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """End both processes (by PID) and remove every socket and file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for vm in self.vms:
            await vm.close()
        if self._workdir is not None and self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    async def __aenter__(self) -> MigrationPair:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def src(self) -> VM:
        """``source``, by its short name."""
        return self.source

    @property
    def dst(self) -> VM:
        """``destination``, by its short name."""
        return self.destination

    @property
    def vms(self) -> list[VM]:
        return [self.source, *self._old_destinations, self.destination]

    async def restart_destination(self) -> VM:
        """A fresh destination (e.g. after the first one failed or exited): the old process
        is ended, the new one listens for the next ``migrate()``."""
        if not self._started or self._closed:
            raise VMStateError("migration pair: not running")
        old = self.destination
        await old.close()
        self._old_destinations = [*self._old_destinations, old]
        self.destination = self._new_destination()
        self.destination.use_workdir(self.workdir)
        await self.destination.start()
        return self.destination

    # -- the migration -------------------------------------------------------------------

    async def set_capabilities(self, capabilities: Mapping[str, bool], *, on: Iterable[VM]) -> None:
        caps = [{"capability": k, "state": v} for k, v in capabilities.items()]
        if caps:
            for vm in on:
                await vm.cmd("migrate-set-capabilities", {"capabilities": caps})

    async def set_parameters(self, parameters: Mapping[str, Any], *, on: Iterable[VM]) -> None:
        if parameters:
            for vm in on:
                await vm.cmd("migrate-set-parameters", dict(parameters))

    async def migrate(
        self,
        capabilities: Mapping[str, bool] | Iterable[Mapping[str, Any]] | None = None,
        parameters: Mapping[str, Any] | None = None,
        *,
        uri: str | None = None,
    ) -> str:
        """Set ``capabilities`` (``{"multifd": True}``, or QMP's list of ``{"capability":
        ..., "state": ...}``) and ``parameters`` on both sides, start the destination's
        incoming side and the source's migration; return the URI at once (do not wait)."""
        if not self._started or self._closed:
            raise VMStateError("migration pair: start() it first")
        caps = _capabilities(capabilities)
        params = dict(parameters or {})
        if self.method is not None:
            caps.setdefault("multifd", True)
            if caps["multifd"]:
                params.setdefault("multifd-compression", self.method)
        both = (self.source, self.destination)
        await self.set_capabilities(caps, on=both)
        await self.set_parameters(params, on=both)
        if uri is None:
            if self.transport == "unix":
                listen = f"unix:{self.workdir / f'mig{self._generation - 1}.sock'}"
            else:
                listen = "tcp:127.0.0.1:0"
            await self.destination.cmd("migrate-incoming", {"uri": listen})
            uri = listen
            if self.transport == "tcp":
                info = await self.destination.query_migrate()
                uri = f"tcp:127.0.0.1:{info['socket-address'][0]['port']}"
        else:
            await self.destination.cmd("migrate-incoming", {"uri": uri})
        await self.source.cmd("migrate", {"uri": uri})
        self.uri = uri
        return uri

    async def wait_for_status(
        self,
        status: str | Sequence[str],
        timeout: float | None = None,
        *,
        vm: VM | None = None,
    ) -> dict[str, Any]:
        """Poll the source's ``query-migrate`` (or ``vm``'s) until its status is ``status``
        (or one of them); the source's answer. ``failed`` (unless asked for) raises
        ``MigrationFailedError`` with its error-desc; another final status not asked for
        raises ``MigrationStatusError``; the deadline raises ``MigrationTimeoutError``.

        When the source reaches ``completed`` this also waits (within the same deadline) for
        the destination to have loaded everything (its status ``completed``): the source
        completes once it has sent the last bytes, a moment before the destination applied
        them, and a test that then reads the destination expects them there."""
        wanted = (status,) if isinstance(status, str) else tuple(status)
        limit = self.timeout if timeout is None else timeout
        end = time.monotonic() + limit
        target = vm or self.source
        info = await target.wait_status(wanted, limit, fail_on=TERMINAL_STATUSES)
        if vm is None and info.get("status") == "completed":
            left = max(end - time.monotonic(), 0.0)
            try:
                await self.destination.wait_status("completed", left, fail_on=TERMINAL_STATUSES)
            except MigrationTimeoutError as err:
                raise MigrationTimeoutError(
                    f"the source completed but the {err}", err.info
                ) from None
        return info

    async def query_migrate(self) -> dict[str, Any]:
        return await self.source.query_migrate()

    async def cancel(self) -> None:
        await self.source.cmd("migrate_cancel")

    async def ensure_non_converge(self) -> None:
        """QEMU's ``migrate_ensure_non_converge``: 30 MB/s and a 1 ms downtime limit on the
        source. It only fails to converge while the guest dirties memory (``guest=``)."""
        await self.set_parameters(NON_CONVERGE, on=[self.source])

    async def ensure_converge(self) -> None:
        """QEMU's ``migrate_ensure_converge``: 1 GB/s and a 30 s downtime limit."""
        await self.set_parameters(CONVERGE, on=[self.source])

    async def inject_fault(self, spec: str, *, on: str | None = None) -> dict[str, Any]:
        """Inject one migemu fault (``x-migemu-inject-fault``), validated here first (an
        unknown spec raises ``FaultSpecError``). ``dst-exit`` goes to the destination, every
        other kind to the source, unless ``on`` ("source"/"destination") says otherwise."""
        check_fault(spec)
        if self.backend == "qemu":
            raise UnsupportedByQEMU(f"fault injection ({spec}) is migemu-only")
        side = on or fault_side(spec)
        if side not in ("source", "destination"):
            raise ValueError(f"on={on!r}: expected 'source' or 'destination'")
        vm = self.source if side == "source" else self.destination
        return await vm.cmd("x-migemu-inject-fault", {"spec": spec})  # type: ignore[no-any-return]

    def ram_equal(self) -> bool:
        """Whether the destination's RAM file equals the source's, byte for byte. Meaningful
        once the migration completed and while neither guest writes memory (an idle guest on
        the destination; the source is paused after a completed migration)."""
        a, b = self.source.ram, self.destination.ram
        if not a.exists() or not b.exists():
            raise VMStateError(f"RAM file missing: {a if not a.exists() else b}")
        return filecmp.cmp(a, b, shallow=False)
