"""The migration commands of one machine: migrate, migrate-incoming, cancel, continue, query.

``MigrationManager`` is the QMP-facing side of the engine (emulator layer): it holds the
source and destination state machines and the source's counters, checks each command the
way QEMU 7.2's ``qmp_migrate``/``qmp_migrate_incoming`` do (same order, same texts), and
starts ``OutgoingMigration``/``IncomingMigration`` threads. A failed incoming migration ends
the process with status 1, as QEMU does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from migemu.emulator import monitor_fds
from migemu.emulator.migration.info import query_migrate
from migemu.emulator.migration.state import (
    MigrationEvent,
    MigrationStateMachine,
    MigrationStatus,
    Side,
)
from migemu.emulator.migration.stats import MigrationStats
from migemu.emulator.migration.uri import MigrationAddress, UnknownProtocol, UriError, parse_uri
from migemu.emulator.runstate import RunState
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine
    from migemu.emulator.migration.incoming import IncomingMigration
    from migemu.emulator.migration.link import ExecSource, Listener
    from migemu.emulator.migration.outgoing import OutgoingMigration

# The engine (threads, sockets, wire formats, numpy) is imported by the first migrate or
# migrate-incoming, not at start-up.

MIGRATION_ACTIVE = "There's a migration process in progress"


class MigrationManager:
    """Source and destination migration state of one machine."""

    def __init__(self, machine: Machine, report: Callable[[str], None] | None = None) -> None:
        self.machine = machine
        settings = machine.migration
        events_on: Callable[[], bool] = lambda: settings.capability("events")  # noqa: E731
        self.source = MigrationStateMachine(Side.SOURCE, machine.events.emit, events_on)
        self.destination = MigrationStateMachine(Side.DESTINATION, machine.events.emit, events_on)
        self.stats = MigrationStats()
        self.outgoing: OutgoingMigration | None = None
        self.incoming: IncomingMigration | None = None
        self.incoming_address: MigrationAddress | None = None
        self.incoming_started = False
        self._lock = threading.Lock()
        self.report = report or (lambda text: print(text, file=sys.stderr, flush=True))
        settings.migration_running = self.source.is_running
        settings.incoming_active = self.incoming_running
        settings.multi_channel_allowed = lambda: (
            self.incoming_address is None or self.incoming_address.multi_channel
        )

    def incoming_running(self) -> bool:
        return self.incoming is not None and self.destination.status is MigrationStatus.ACTIVE

    # -- source -----------------------------------------------------------------------------

    def migrate(self, args: dict[str, Any]) -> None:
        machine = self.machine
        if args.get("resume"):
            self._resume(args)
            return
        if self.source.is_running():
            raise QMPError(MIGRATION_ACTIVE)
        if machine.vm.state is RunState.INMIGRATE:
            raise QMPError("Guest is waiting for an incoming migration")
        if machine.vm.state is RunState.POSTMIGRATE:
            raise QMPError("Can't migrate the vm that was paused due to previous migration")
        self.stats.start(machine.ram.total)
        self.source.start()
        try:
            address = parse_uri(args["uri"])
        except UnknownProtocol as err:
            self.source.handle(MigrationEvent.ERROR)
            raise QMPError(err.desc) from err
        except UriError as err:
            self.source.fail(err.desc)
            raise QMPError(err.desc) from err
        if address.kind == "fd":  # fd_start_outgoing_migration: a getfd name, taken now
            try:
                address = dataclasses.replace(address, fd=monitor_fds.take_named(address.path))
            except QMPError as err:
                self.source.fail(err.desc)
                raise
        from migemu.emulator.migration.outgoing import OutgoingContext, OutgoingMigration

        ctx = OutgoingContext(
            ram=machine.ram,
            dirty=machine.dirty,
            vm=machine.vm,
            events=machine.events,
            settings=machine.migration,
            machine_type=machine.stream_machine_type,
            uuid=machine.uuid_bytes,
            device_sections=machine.device_sections(),
            uuid_set=machine.options.uuid_set,
            throttle=machine.cpu_throttle,
            report=lambda text: self.report(f"{machine.prog_name}: {text}"),
            tls_objects=machine.tls_objects,
        )
        if machine.migration.capability("multifd") and not address.multi_channel:
            self.report(f"{machine.prog_name}: multifd is not supported by current protocol")
            self.source.handle(MigrationEvent.ERROR)
            if address.kind == "fd":  # migrate_fd_cleanup closes the channel
                with contextlib.suppress(OSError):
                    os.close(address.fd)
            return
        outgoing = OutgoingMigration(ctx, address, self.source, self.stats, self._outgoing_done)
        self.outgoing = outgoing
        outgoing.start()

    def _outgoing_done(self, outgoing: OutgoingMigration) -> None:
        if self.source.status is MigrationStatus.FAILED and self.source.error_desc:
            self.report(f"{self.machine.prog_name}: {self.source.error_desc}")

    def cancel(self, args: dict[str, Any] | None = None) -> None:
        """migrate_cancel: succeeds whatever the state (7.2)."""
        outgoing = self.outgoing
        if outgoing is None or not self.source.is_running():
            return
        self.source.try_handle(MigrationEvent.CANCEL)
        outgoing.cancel()

    def continue_(self, args: dict[str, Any]) -> None:
        state = args["state"]
        current = self.source.status
        if current.value != state:
            raise QMPError(f"Migration not in expected state: {current.value}")
        if self.outgoing is not None:
            self.outgoing.resume_switchover()

    def start_postcopy(self, args: dict[str, Any] | None = None) -> None:
        """migrate-start-postcopy (qmp_migrate_start_postcopy): a flag the migration thread
        reads; no error once the migration has ended (that would be racy, says QEMU)."""
        settings = self.machine.migration
        if not (settings.capability("postcopy-ram") or settings.capability("dirty-bitmaps")):
            raise QMPError(
                "Enable postcopy with migrate_set_capability before the start of migration"
            )
        if self.source.status is MigrationStatus.NONE:
            raise QMPError("Postcopy must be started after migration has been started")
        if self.outgoing is not None:
            self.outgoing.postcopy.start_requested.set()

    def recover(self, args: dict[str, Any]) -> None:
        """migrate-recover (qmp_migrate_recover): the destination listens again, for the
        source's ``migrate resume:true``."""
        incoming = self.incoming
        if incoming is None or self.destination.status is not MigrationStatus.POSTCOPY_PAUSED:
            raise QMPError("Migrate recover can only be run when postcopy is paused.")
        uri = args["uri"]
        self.destination.handle(MigrationEvent.INCOMING_START)  # its "setup" event
        try:
            address = parse_uri(uri)
        except UnknownProtocol as err:
            raise QMPError(f"unknown migration protocol: {uri}") from err
        except UriError as err:
            raise QMPError(err.desc) from err
        from migemu.emulator.migration.link import ConnectError, Listener

        if address.kind not in ("tcp", "unix"):
            raise QMPError(f"migemu cannot recover a postcopy migration over {address.kind}")
        try:
            listener = Listener(address)
        except ConnectError as err:
            raise QMPError(err.desc) from err
        incoming.postcopy.recover(listener)

    def pause(self, args: dict[str, Any] | None = None) -> None:
        """migrate-pause (qmp_migrate_pause): break the stream of a postcopy migration,
        source side first; both sides go to postcopy-paused."""
        if self.source.status is MigrationStatus.POSTCOPY_ACTIVE and self.outgoing is not None:
            self.outgoing.postcopy.pause_request()
            return
        if self.destination.status is MigrationStatus.POSTCOPY_ACTIVE and self.incoming is not None:
            self.incoming.postcopy.pause_request()
            return
        raise QMPError("migrate-pause is currently only supported during postcopy-active state")

    def _resume(self, args: dict[str, Any]) -> None:
        """migrate resume:true (migrate_prepare's resume checks, then the new channel)."""
        if self.source.status is not MigrationStatus.POSTCOPY_PAUSED or self.outgoing is None:
            raise QMPError("Cannot resume if there is no paused migration")
        if self.machine.migration.capability("release-ram"):
            raise QMPError("Postcopy recovery cannot work when release-ram capability is set")
        try:
            address = parse_uri(args["uri"])
        except (UnknownProtocol, UriError) as err:
            raise QMPError(err.desc) from err
        self.outgoing.postcopy.resume(address)

    # -- destination ------------------------------------------------------------------------

    def migrate_incoming(self, args: dict[str, Any]) -> None:
        if self.incoming_started:
            raise QMPError("The incoming migration has already been started")
        if self.machine.vm.state is not RunState.INMIGRATE:
            raise QMPError("'-incoming' was not specified on the command line")
        self.start_incoming(args["uri"])

    def start_incoming(self, uri: str) -> None:
        """qemu_start_incoming_migration: the setup event, then listen on ``uri``."""
        self.destination.handle(MigrationEvent.INCOMING_START)
        try:
            address = parse_uri(uri)
        except UnknownProtocol as err:
            raise QMPError(f"unknown migration protocol: {uri}") from err
        except UriError as err:
            raise QMPError(err.desc) from err
        from migemu.emulator.migration.incoming import IncomingContext, IncomingMigration
        from migemu.emulator.migration.link import ConnectError, ExecSource, FdSource, Listener

        if address.kind not in ("tcp", "unix", "exec", "fd"):
            raise QMPError(f"migemu cannot receive a migration over {address.kind}")
        listener: Listener | ExecSource | FdSource
        try:
            if address.kind == "exec":
                listener = ExecSource(address)
            elif address.kind == "fd":  # fd_start_incoming_migration: monitor_fd_param
                address = dataclasses.replace(address, fd=monitor_fds.fd_param(address.path))
                listener = FdSource(address)
            else:
                listener = Listener(address)
        except ConnectError as err:
            raise QMPError(err.desc) from err
        machine = self.machine
        ctx = IncomingContext(
            ram=machine.ram,
            vm=machine.vm,
            settings=machine.migration,
            machine_type=machine.stream_machine_type,
            uuid=machine.uuid_bytes,
            sections=machine.incoming_sections(),
            on_section=machine.load_section,
            uuid_set=machine.options.uuid_set,
            workload=lambda: machine.workload,
            tls_objects=machine.tls_objects,
            report=lambda text: self.report(f"{machine.prog_name}: {text}"),
        )
        self.incoming_address = address
        self.incoming = IncomingMigration(ctx, listener, self.destination, self._incoming_done)
        self.incoming_started = True
        self.incoming.start()

    def _incoming_done(self, incoming: IncomingMigration) -> None:
        # A failure before the channels were all up leaves the state at none (as in 7.2,
        # which has no transition for it); the process still exits 1 like a failed load.
        failed = self.destination.status is MigrationStatus.FAILED or (
            incoming.error is not None and self.destination.status is MigrationStatus.NONE
        )
        if failed and not incoming.cancelled:
            # One error_report line per line of the error (a vmstate load failure is the
            # device's own line, then "load of migration failed: ...").
            for line in str(incoming.error).splitlines():
                self.report(f"{self.machine.prog_name}: {line}")
            self.machine.request_exit(1)

    # -- query ------------------------------------------------------------------------------

    def query(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        incoming = self.incoming
        sockets = None
        if incoming is not None and self.destination.status is not MigrationStatus.COMPLETED:
            sockets = incoming.socket_address()
        blocktime = None
        if incoming is not None and self.machine.migration.capability("postcopy-blocktime"):
            ms = incoming.postcopy.blocktime_ms()
            if ms is not None:  # QEMU's blocktime context exists once postcopy was advised
                blocktime = (ms, [ms])  # one emulated vCPU
        throttle = self.machine.cpu_throttle
        return query_migrate(
            self.source,
            self.stats,
            self.destination,
            sockets,
            postcopy_blocktime=blocktime,
            cpu_throttle_percentage=throttle.percentage if throttle.active else None,
        )

    def shutdown(self, join_timeout_s: float = 10.0) -> None:
        """The machine is going away: end every migration thread's IO and wait for the
        threads, so that nothing touches guest RAM once it is unmapped."""
        threads = []
        if self.outgoing is not None:
            self.outgoing.cancel()
            threads.append(self.outgoing.thread)
        if self.incoming is not None:
            self.incoming.cancel()
            threads.append(self.incoming.thread)
        current = threading.current_thread()
        for thread in threads:
            if thread.is_alive() and thread is not current:
                thread.join(join_timeout_s)
