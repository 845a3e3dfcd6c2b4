"""The source side of a migration: QEMU 7.2's migration thread (emulator layer).

``OutgoingMigration.run`` is the thread body: connect the main channel (and the multifd
channels), write the stream header and the RAM setup section, then iterate -- each iteration
is one SECTION_PART sending dirty pages until the rate-limit window or 50 ms is used up,
closed by a multifd sync and EOS -- until the pending dirty bytes fit in ``downtime-limit`` at
the measured bandwidth. Then it stops the VM (STOP), syncs the dirty log one last time, sends
the rest in the SECTION_END, the device sections and EOF: ``completed``, runstate
``postmigrate``. Zero pages go on the main stream as ZERO records, other pages in multifd
packets (or as PAGE records without multifd). The first error or a cancel latches: no more
IO anywhere, the state becomes ``failed``/``cancelled`` and a stopped guest runs again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from migemu.emulator.events import EventBus
from migemu.emulator.guest.dirty import DirtyBitmap, mask_runs
from migemu.emulator.guest.zero import split_zero_runs
from migemu.emulator.migration import faults
from migemu.emulator.migration.channels import ChannelPool
from migemu.emulator.migration.link import ConnectError, ErrorLatch, Link, connect
from migemu.emulator.migration.postcopy_outgoing import OutgoingPostcopy
from migemu.emulator.migration.settings import MigrationSettings
from migemu.emulator.migration.state import MigrationEvent, MigrationStateMachine, MigrationStatus
from migemu.emulator.migration.stats import MigrationStats
from migemu.emulator.migration.throttle import AutoConverge, CpuThrottle
from migemu.emulator.migration.tls import TlsError, TlsObjects, TlsSession
from migemu.emulator.migration.uri import MigrationAddress
from migemu.emulator.ram import PAGE_SIZE, GuestRAM
from migemu.emulator.runstate import RunState
from migemu.emulator.vm import VM
from migemu.multifd.constants import PACKET_PAGES
from migemu.multifd.errors import ChannelClosed, MultiFDError
from migemu.multifd.mainstream import MainStreamEncoder

log = logging.getLogger(__name__)

BUFFER_DELAY_S = 0.1  # QEMU's rate-limit window (BUFFER_DELAY, 100 ms)
MAX_ITERATE_S = 0.05  # ram_save_iterate gives up the section after 50 ms (MAX_WAIT)
MAIN_BUFFER_BYTES = 64 * 1024
CANCELLED_DESC = "migration cancelled"


@dataclass
class DeviceSection:
    """A non-RAM section the stream carries after RAM (e.g. the guest vCPU's state)."""

    encode: Callable[[MainStreamEncoder], bytes]


@dataclass
class OutgoingContext:
    """What the migration thread works on; owned by the machine."""

    ram: GuestRAM
    dirty: dict[str, DirtyBitmap]
    vm: VM
    events: EventBus
    settings: MigrationSettings
    machine_type: str
    uuid: bytes
    device_sections: list[DeviceSection] = field(default_factory=list)
    uuid_set: bool = False  # -uuid was given: validate-uuid then sends it (configuration)
    throttle: CpuThrottle | None = None  # the vCPU throttle auto-converge drives
    report: Callable[[str], None] | None = None  # error_report (stderr, program name first)
    tls_objects: TlsObjects | None = None  # where tls-creds / tls-authz are looked up


class MainWriter:
    """The main channel's output buffer (QEMUFile's), with byte accounting."""

    def __init__(self, link: Link, stats: MigrationStats) -> None:
        self.link = link
        self.stats = stats
        self.buf = bytearray()

    def ram(self, data: bytes, vm_running: bool) -> None:
        self.stats.add_ram_bytes(len(data), vm_running=vm_running)
        self._put(data)

    def other(self, data: bytes) -> None:
        self.stats.add_main_stream_bytes(len(data))
        self._put(data)

    def _put(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= MAIN_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            self.link.send(data)


class RateLimiter:
    """max-bandwidth per 100 ms window, read live (it may change mid-migration)."""

    def __init__(self, settings: MigrationSettings, latch: ErrorLatch) -> None:
        self.settings = settings
        self.latch = latch
        self.window_start = time.monotonic()
        self.used = 0

    def budget(self) -> int | None:
        bandwidth = self.settings.get("max-bandwidth")
        return None if bandwidth == 0 else max(1, int(bandwidth * BUFFER_DELAY_S))

    def account(self, nbytes: int) -> None:
        self.used += nbytes

    def exhausted(self) -> bool:
        budget = self.budget()
        return budget is not None and self.used >= budget

    def wait_window(self) -> None:
        """Sleep to the end of the window if its budget is used up, then start a new one."""
        now = time.monotonic()
        end = self.window_start + BUFFER_DELAY_S
        if self.exhausted() and now < end:
            self.latch.fired.wait(end - now)
            self.latch.check()
            now = time.monotonic()
        if now >= end or self.exhausted():
            self.window_start = now
            self.used = 0


class OutgoingMigration:
    """One outgoing migration; ``start()`` runs it in its own thread."""

    def __init__(
        self,
        ctx: OutgoingContext,
        address: MigrationAddress,
        sm: MigrationStateMachine,
        stats: MigrationStats,
        on_finish: Callable[[OutgoingMigration], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.address = address
        self.sm = sm
        self.stats = stats
        self.on_finish = on_finish
        self.latch = ErrorLatch()
        self.params = dict(ctx.settings.parameters)  # channel settings fixed at start
        self.caps = dict(ctx.settings.capabilities)
        self.multifd = self.caps["multifd"]
        send_uuid = ctx.uuid_set and self.caps.get("validate-uuid", False)
        self.encoder = MainStreamEncoder(ctx.machine_type, ctx.uuid if send_uuid else None)
        self.auto_converge = (
            AutoConverge(ctx.throttle)
            if ctx.throttle is not None and self.caps.get("auto-converge")
            else None
        )
        self.limiter = RateLimiter(ctx.settings, self.latch)
        self.continue_event = threading.Event()
        self.vm_was_running = False
        self.stopped_vm = False
        self.main: Link | None = None
        self.pool: ChannelPool | None = None
        self.writer: MainWriter | None = None
        # QEMU's migration bitmap: pages synced from the dirty log and not yet sent.
        self.pending = {b.name: np.zeros(b.pages, dtype=np.bool_) for b in ctx.ram.blocks}
        self.cursor: dict[str, int] = {b.name: 0 for b in ctx.ram.blocks}
        self.postcopy = OutgoingPostcopy(self)  # return path and postcopy phase
        self.thread = threading.Thread(target=self._run, name="live_migration", daemon=True)

    # -- control from the monitor ----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        """migrate_cancel: latch a cancel; the thread ends the migration as ``cancelled``."""
        self.latch.fail(ChannelClosed(CANCELLED_DESC))
        self.continue_event.set()

    def resume_switchover(self) -> None:
        """migrate-continue from pre-switchover."""
        self.continue_event.set()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._migrate()
        except MultiFDError as err:
            self._fail(err.desc)
        except ConnectError as err:
            self._fail(err.desc)
        except Exception as err:  # a bug must fail the migration, not kill the thread silently
            log.exception("outgoing migration failed unexpectedly")
            self._fail(f"migemu internal error: {err!r}")
        finally:
            self._cleanup()
            if self.on_finish is not None:
                self.on_finish(self)

    def _fail(self, desc: str) -> None:
        """Fail with the migration's first error (a channel may have latched one before
        ours); a cancel is not a failure."""
        self.latch.fail(ChannelClosed(desc))
        error = self.latch.error
        reason = error.desc if error is not None else desc
        if reason == CANCELLED_DESC or self.sm.status in (
            MigrationStatus.CANCELLING,
            MigrationStatus.CANCELLED,
        ):
            return
        if self.sm.status is MigrationStatus.POSTCOPY_ACTIVE:
            self.sm.set_error(reason)
            self.sm.try_handle(MigrationEvent.ERROR)
            return
        self.sm.fail(reason)

    def _cleanup(self) -> None:
        if self.ctx.throttle is not None:  # migration_iteration_finish: cpu_throttle_stop
            self.ctx.throttle.stop()
        if self.pool is not None:
            self.pool.stop()
        if self.main is not None:
            self.main.close()
        self.postcopy.stop()
        status = self.sm.status
        if status is MigrationStatus.CANCELLING:
            self.sm.try_handle(MigrationEvent.CANCEL_DONE)
        if self.sm.status in (MigrationStatus.FAILED, MigrationStatus.CANCELLED):
            # migration_iteration_finish: a guest we stopped runs again
            vm = self.ctx.vm
            if self.postcopy.active:
                # The destination ran the guest: restarting the source would run it twice
                # (QEMU 7.2 does). It stays stopped, as after a completed migration.
                if vm.state is RunState.FINISH_MIGRATE:
                    vm.set_state(RunState.POSTMIGRATE)
            elif self.stopped_vm and self.vm_was_running:
                vm.start()
            elif vm.state is RunState.FINISH_MIGRATE:
                vm.set_state(RunState.POSTMIGRATE)

    def _tls_session(self) -> TlsSession | None:
        """migration_tls_client_create, once the main channel is connected (as in 7.2)."""
        from migemu.emulator.migration import tls

        if not tls.tls_enabled(self.params):
            return None
        host = self.address.host if self.address.kind == "tcp" else None
        return tls.client_session(self.ctx.tls_objects or TlsObjects(), self.params, host)

    def _open(self, name: str, session: TlsSession | None) -> Link:
        link = connect(self.address, self.latch, name)
        if session is not None:
            link.defer_tls(session)  # its channel thread handshakes, then greets
        return link

    def _connect(self) -> None:
        self.main = connect(self.address, self.latch, "main")
        try:
            session = self._tls_session()
            if session is not None:
                self.main.start_tls(session)
        except TlsError as err:
            # Closed before the state says failed, as QEMU drops the channel first: the
            # destination sees the end at once (and exits, if its handshake had succeeded).
            self.main.close()
            raise ConnectError(err.desc) from err
        self.writer = MainWriter(self.main, self.stats)
        if self.multifd:
            links: list[Link] = []
            try:
                for i in range(self.params["multifd-channels"]):
                    links.append(self._open(f"multifd{i}", session))
            except BaseException:
                for link in links:  # the pool never got them: close them here, now
                    link.close()
                raise
            method = self.params["multifd-compression"]
            level = self.params.get(f"multifd-{method}-level", 1)
            self.pool = ChannelPool(links, method, level, self.latch, self.stats, self.ctx.uuid)
            self.pool.start()

    def _migrate(self) -> None:
        self._connect()
        self.latch.check()
        self.stats.begin_setup(self.ctx.settings.get("downtime-limit"))
        self._setup()
        self.stats.end_setup()
        if not self.sm.compare_and_set(MigrationStatus.SETUP, MigrationEvent.SETUP_DONE):
            self.latch.check()
            return
        while True:
            self.latch.check()
            self.stats.update(self.ctx.settings.get("downtime-limit"))
            pending = self._pending_bytes()
            threshold = self.stats.threshold_size
            if self.postcopy.wanted(pending, threshold):
                self.postcopy.run()
                return
            if pending < threshold:
                self._bitmap_sync()
                pending = self._pending_bytes()
            self.stats.set_remaining(pending)
            if pending == 0 or pending < threshold:
                self._complete()
                return
            self._iterate()
            self.limiter.wait_window()

    # -- pieces ------------------------------------------------------------------------------

    def _pending_bytes(self) -> int:
        return sum(int(np.count_nonzero(p)) for p in self.pending.values()) * PAGE_SIZE

    def _bitmap_sync(self) -> None:
        """migration_bitmap_sync: move the dirty log into the pending set, count a pass."""
        new = 0
        for block in self.ctx.ram.blocks:
            snapshot = self.ctx.dirty[block.name].sync_and_clear()
            mask = snapshot.mask
            new += int(np.count_nonzero(mask & ~self.pending[block.name]))
            self.pending[block.name] |= mask
        n = self.stats.bitmap_sync(new)
        period = self.stats.last_period
        if self.auto_converge is not None and period is not None:
            self.auto_converge.period_ended(*period, self.ctx.settings.parameters)
        if self.ctx.settings.capability("events"):
            self.ctx.events.emit("MIGRATION_PASS", {"pass": n})

    def _setup(self) -> None:
        assert self.writer is not None
        faults.phase(faults.Phase.SETUP)
        blocks = self.ctx.ram.blocks
        for block in blocks:
            self.ctx.dirty[block.name].mark_all()  # every page goes once
        self._bitmap_sync()
        self.writer.other(self.encoder.header())
        self.postcopy.after_header()
        setup = self.encoder.ram_start([(b.name, b.size) for b in blocks])
        if self.pool is not None:
            self.pool.sync()
        self.writer.ram(setup, vm_running=True)
        self.writer.flush()

    def _close_section(self) -> None:
        assert self.writer is not None
        if self.pool is not None:
            self.pool.sync()
        self.writer.ram(self.encoder.ram_close(), vm_running=self.ctx.vm.running)
        self.writer.flush()

    def _iterate(self) -> None:
        """One ram_save_iterate: a SECTION_PART with pages until the budget or 50 ms is out."""
        assert self.writer is not None
        faults.phase(faults.Phase.ITERATE)
        self.writer.ram(self.encoder.ram_part(), vm_running=True)
        deadline = time.monotonic() + MAX_ITERATE_S
        self._send_pending(until=deadline)
        self._close_section()

    def _send_pending(self, until: float | None) -> None:
        """Send pending pages, each block from its cursor on and wrapping around (QEMU's
        last_seen_block/last_page); stop at ``until`` or when the rate-limit budget is used.
        ``until`` None: send everything, no limit (the completion pass)."""
        for block in self.ctx.ram.blocks:
            pending = self.pending[block.name]
            start = self.cursor[block.name]
            for lo, hi in ((start, block.pages), (0, start)):
                for first, n in mask_runs(pending[lo:hi], base=lo):
                    done = 0
                    while done < n:
                        chunk = min(n - done, PACKET_PAGES)
                        page = first + done
                        self._send_run(block.name, page, chunk)
                        pending[page : page + chunk] = False
                        done += chunk
                        self.cursor[block.name] = page + chunk
                        if until is not None and (
                            self.limiter.exhausted() or time.monotonic() >= until
                        ):
                            return
            self.cursor[block.name] = 0

    def _send_run(self, name: str, first: int, n: int) -> None:
        """Pages [first, first+n) of block ``name``: ZERO records or data pages."""
        assert self.writer is not None
        block = self.ctx.ram.block(name)
        assert block is not None
        view = block.view()
        running = self.ctx.vm.running
        for sub_first, sub_n, is_zero in split_zero_runs(view, first, n):
            offsets = [p * PAGE_SIZE for p in range(sub_first, sub_first + sub_n)]
            if is_zero:
                data = self.encoder.ram_zero_pages(name, offsets)
                self.writer.ram(data, vm_running=running)
                self.stats.add_zero_pages(sub_n)
                self.limiter.account(len(data))
                continue
            self.stats.add_normal_pages(sub_n)
            pages = [view[o : o + PAGE_SIZE] for o in offsets]
            if self.pool is not None:
                self.writer.flush()  # zero records first, as QEMU's stream order has them
                self.pool.submit(name, offsets, pages)
                self.limiter.account(sub_n * PAGE_SIZE)
            else:
                for o, page in zip(offsets, pages, strict=True):
                    data = self.encoder.ram_page(name, o, page)
                    self.writer.ram(data, vm_running=running)
                    self.limiter.account(len(data))

    def _complete(self) -> None:
        """migration_completion: stop the guest, last pass, device state, EOF."""
        assert self.writer is not None
        faults.phase(faults.Phase.SWITCHOVER)
        vm = self.ctx.vm
        self.vm_was_running = vm.running
        runstate = vm.state.value
        self.stats.vm_stopped()
        if vm.running:
            vm.stop(RunState.FINISH_MIGRATE)
            self.stopped_vm = True
        else:
            vm.set_state(RunState.FINISH_MIGRATE)
        if self.caps["pause-before-switchover"]:
            if not self.sm.compare_and_set(
                MigrationStatus.ACTIVE, MigrationEvent.PAUSE_BEFORE_SWITCHOVER
            ):
                self.latch.check()
                return
            while not self.continue_event.wait(0.1):
                self.latch.check()
            self.latch.check()
            self.sm.compare_and_set(MigrationStatus.PRE_SWITCHOVER, MigrationEvent.CONTINUE)
        self._bitmap_sync()
        self.writer.ram(self.encoder.ram_end(), vm_running=False)
        self._send_pending(until=None)
        self.stats.set_remaining(0)
        self._close_section()
        self.writer.other(self.encoder.timer())
        for section in self.ctx.device_sections:
            self.writer.other(section.encode(self.encoder))
        self.writer.other(self.encoder.globalstate(runstate))
        self.writer.other(self.encoder.eof())
        self.writer.other(self.encoder.vmdescription())
        self.writer.flush()
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        self.latch.check()
        self.postcopy.await_shut()
        if self.sm.status is MigrationStatus.DEVICE:
            done = self.sm.compare_and_set(MigrationStatus.DEVICE, MigrationEvent.DEVICE_DONE)
        else:
            done = self.sm.compare_and_set(MigrationStatus.ACTIVE, MigrationEvent.COMPLETE)
        if done:
            vm.set_state(RunState.POSTMIGRATE)
            self.stats.complete()
        with contextlib.suppress(MultiFDError):
            self.latch.check()
