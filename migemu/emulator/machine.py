"""The emulated machine: everything one ``migemu`` process is, wired together (emulator layer).

A ``Machine`` owns the event bus, the VM run state, guest RAM, the migration settings and the
command dispatcher, and registers the command handlers. Servers (QMP, HMP, dashboard) only
talk to it through ``dispatcher`` and ``events``. Shutdown is a request: whoever runs the
event loop installs ``on_shutdown`` and ends the process after the current reply is sent.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from migemu import __version__
from migemu.emulator.dispatch import Dispatcher
from migemu.emulator.events import EventBus
from migemu.emulator.migration.throttle import CpuThrottle
from migemu.emulator.monitor_fds import FdSets
from migemu.emulator.ram import GuestRAM
from migemu.emulator.runstate import RunState
from migemu.emulator.vm import VM
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.guest.dirty import DirtyBitmap
    from migemu.emulator.guest.workload import Workload
    from migemu.emulator.migration.outgoing import DeviceSection
    from migemu.multifd.mainstream.records import SectionData, SectionSpec

# Modules imported on first use, not at start-up: numpy (dirty logs, workloads), the
# migration engine and wire formats. An idle machine answers QMP without them.

QEMU_VERSION = (7, 2, 22)
PACKAGE = f"migemu {__version__}"


def version_info() -> dict[str, Any]:
    """query-version's value, members in schema order (qemu{major,minor,micro}, package)."""
    major, minor, micro = QEMU_VERSION
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": PACKAGE}


@dataclass
class MachineOptions:
    """What the command line decided about the machine."""

    machine_type: str = "none"
    name: str | None = None
    uuid: str = "00000000-0000-0000-0000-000000000000"
    uuid_set: bool = False  # -uuid was given (QEMU's qemu_uuid_set)
    start_paused: bool = False
    incoming: str | None = None
    globals: list[tuple[str, str, str]] = field(default_factory=list)
    prog_name: str = "migemu"
    guest: str = "idle"  # -migemu-guest spec: idle, dirty,..., sweep,...
    memdevs: list[dict[str, Any]] = field(default_factory=list)  # query-memdev entries
    cpus: int = 0  # -machine none has no CPU; pc/q35 have -smp's count (1 by default)


class Machine:
    """One emulated QEMU."""

    def __init__(self, options: MachineOptions, ram: GuestRAM | None = None) -> None:
        from migemu.emulator.commands import register_all  # commands import Machine's types
        from migemu.emulator.migration.manager import MigrationManager
        from migemu.emulator.migration.settings import MigrationSettings
        from migemu.emulator.migration.tls import TlsObjects

        self.options = options
        self.uuid = str(uuidlib.UUID(options.uuid))
        self.events = EventBus()
        self.ram = ram if ram is not None else GuestRAM()
        self.vm = VM(
            self.events, start_paused=options.start_paused, incoming=options.incoming is not None
        )
        self.migration = MigrationSettings.from_globals(options.globals)
        self.migration.incoming = lambda: self.vm.state is RunState.INMIGRATE
        self._dirty: dict[str, DirtyBitmap] | None = None
        self.workload: Workload | None = None
        self.cpu_throttle = CpuThrottle()  # auto-converge's; the workload follows it
        self.set_guest(options.guest)
        self.vm.add_listener(self._runstate_changed)
        self.tls_objects = TlsObjects()  # -object / object-add tls-creds-*, authz-simple
        self.migrations = MigrationManager(self)
        self.dispatcher = Dispatcher()
        self.fdsets = FdSets(running=lambda: self.vm.state is RunState.RUNNING)
        self.shutdown_reason: str | None = None
        self.exit_status = 0
        self.on_shutdown: Callable[[str], None] | None = None
        self.monitor_endpoints: list[Any] = []  # set by the runtime (query-chardev)
        register_all(self)

    @property
    def prog_name(self) -> str:
        return self.options.prog_name

    @property
    def stream_machine_type(self) -> str:
        """The machine name the migration stream's CONFIGURATION section carries."""
        return self.options.machine_type

    @property
    def uuid_bytes(self) -> bytes:
        return uuidlib.UUID(self.uuid).bytes

    # -- the guest ---------------------------------------------------------------------------

    @property
    def dirty(self) -> dict[str, DirtyBitmap]:
        """The dirty log of each RAM block, created when a workload or a migration first
        needs it (before that, nothing has written guest RAM that a migration must resend:
        migration setup marks every page dirty anyway)."""
        if self._dirty is None:
            from migemu.emulator.guest.dirty import DirtyBitmap

            self._dirty = {b.name: DirtyBitmap(b.pages) for b in self.ram.blocks}
        return self._dirty

    def set_guest(self, spec_text: str) -> None:
        """Replace the guest workload (``-migemu-guest`` / ``x-migemu-set-guest``)."""
        if spec_text.strip() == "idle" and self.workload is None:
            return  # the default: nothing to run, nothing to import
        from migemu.emulator.guest.workload import (
            DirtySpec,
            WorkloadError,
            WorkloadSpecError,
            create_workload,
            parse_workload_spec,
        )

        try:
            spec = parse_workload_spec(spec_text)
            workload = None
            if not (isinstance(spec, DirtySpec) and spec.rate == 0):
                workload = create_workload(spec, self.ram.blocks, self.dirty)
        except (WorkloadSpecError, WorkloadError) as err:
            raise QMPError(str(err)) from err
        old, self.workload = self.workload, workload
        if old is not None:
            self.cpu_throttle.unsubscribe(old.set_throttle)
            old.stop()
        if workload is not None:
            self.cpu_throttle.subscribe(workload.set_throttle)
            if not self.vm.running:
                workload.pause()  # before start(): a stopped VM's vCPU must not write at all
            workload.start()

    def _runstate_changed(self, old: RunState, new: RunState) -> None:
        # The vCPU runs exactly while the VM runs: a stop must freeze guest memory.
        if self.workload is None:
            return
        if new is RunState.RUNNING:
            self.workload.resume()
        else:
            self.workload.pause()

    def device_sections(self) -> list[DeviceSection]:
        """Sections after RAM the source sends: the vCPU's state when the guest has one."""
        from migemu.emulator.guest import vcpu_section
        from migemu.emulator.guest.workload import SweepWorkload
        from migemu.emulator.migration.outgoing import DeviceSection

        workload = self.workload
        if not isinstance(workload, SweepWorkload):
            return []
        return [DeviceSection(lambda enc: vcpu_section.encode(workload.state()))]

    def incoming_sections(self) -> list[SectionSpec]:
        from migemu.emulator.guest import vcpu_section

        return [vcpu_section.SPEC]

    def load_section(self, record: SectionData) -> None:
        """The source's vCPU state: the destination's guest continues from it."""
        from migemu.emulator.guest import vcpu_section
        from migemu.emulator.guest.workload import SweepWorkload

        if record.idstr == vcpu_section.IDSTR and isinstance(self.workload, SweepWorkload):
            assert isinstance(record.value, bytes)
            self.workload.restore(record.value)

    def start_incoming(self) -> None:
        """``-incoming URI`` on the command line: listen now (``defer`` waits for QMP)."""
        uri = self.options.incoming
        if uri is not None and uri != "defer":
            self.migrations.start_incoming(uri)
            self.migrations.incoming_started = True

    def request_exit(self, status: int) -> None:
        """End the process with ``status`` without a SHUTDOWN event (QEMU's exit())."""
        self.exit_status = status
        if self.on_shutdown is not None:
            self.on_shutdown("exit")

    def request_shutdown(self, reason: str, *, guest: bool = False) -> None:
        """QEMU's shutdown request: SHUTDOWN event now, process exit once the loop gets to it."""
        if self.shutdown_reason is not None:
            return
        self.shutdown_reason = reason
        self.events.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        if self.on_shutdown is not None:
            self.on_shutdown(reason)

    @property
    def runstate(self) -> RunState:
        return self.vm.state

    def close(self) -> None:
        self.migrations.shutdown()
        if self.workload is not None:
            self.workload.stop()
        self.ram.close()
