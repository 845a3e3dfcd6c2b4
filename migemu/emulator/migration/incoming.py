"""The destination side of a migration: QEMU 7.2's incoming path (emulator layer).

``IncomingMigration`` owns the listener (or the ``exec:`` child). Its thread accepts the main
channel first, then -- with the multifd capability -- ``multifd-channels`` more connections,
each identified by its MultiFDInit greeting; once all are there the state goes none ->
active and the main stream is loaded: ZERO/PAGE records straight into guest RAM, multifd
packets by one thread per channel, each RAM EOS a barrier that waits for every channel's
SYNC. After EOF and the VM description the guest starts (RESUME) if the source's guest was
running and ``autostart`` is on, then ``completed``. Any error latches: no more IO on any
channel, the state becomes ``failed``, and the machine exits with status 1, as QEMU does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from migemu.emulator.guest.zero import clear_nonzero_pages
from migemu.emulator.migration import faults
from migemu.emulator.migration.link import ErrorLatch, ExecSource, FdSource, Link, Listener
from migemu.emulator.migration.postcopy_incoming import IncomingPostcopy
from migemu.emulator.migration.settings import MigrationSettings
from migemu.emulator.migration.state import MigrationEvent, MigrationStateMachine, MigrationStatus
from migemu.emulator.migration.tls import TlsError, TlsObjects
from migemu.emulator.ram import PAGE_SIZE, GuestRAM
from migemu.emulator.runstate import RunState
from migemu.emulator.vm import VM
from migemu.multifd.errors import ChannelClosed, MultiFDError, ProtocolError
from migemu.multifd.init import INIT_ERROR_PREFIX, MultiFDInit, check_init
from migemu.multifd.mainstream import MainStreamDecoder
from migemu.multifd.mainstream.records import (
    QEMU_SECTIONS,
    VMEOF,
    Command,
    GlobalState,
    RamEOS,
    RamPage,
    RamZero,
    SectionData,
    SectionSpec,
    VMDescription,
)
from migemu.multifd.receiver import ChannelDecoder, DirectPayload, ReceivedPacket, offset_runs
from migemu.multifd.sync import RecvSync

if TYPE_CHECKING:
    from migemu.emulator.guest.workload import Workload

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
# QEMU 7.2 waits forever for multifd channels the source never opens; migemu gives up.
CHANNEL_TIMEOUT_S = 10.0
NOT_MULTIFD = "multifd is not enabled on this side, but the source opened a multifd channel"
WAIT_SLICE_S = 0.05
ZERO_PAGE = bytes(PAGE_SIZE)


@dataclass
class IncomingContext:
    ram: GuestRAM
    vm: VM
    settings: MigrationSettings
    machine_type: str
    uuid: bytes
    # Extra sections this side loads (e.g. the guest vCPU state), after QEMU's own.
    sections: list[SectionSpec] = field(default_factory=list)
    on_section: Callable[[SectionData], None] | None = None
    uuid_set: bool = False  # -uuid was given: a configuration/uuid must then match it
    # The guest's vCPU, which waits for missing pages in postcopy (None: no guest).
    workload: Callable[[], Workload | None] | None = None
    report: Callable[[str], None] | None = None  # error_report (stderr, program name first)
    tls_objects: TlsObjects | None = None  # where tls-creds / tls-authz are looked up


class _Barrier:
    """The RAM EOS <-> SYNC barrier between the main loader and the channel threads."""

    def __init__(self, channels: int, latch: ErrorLatch) -> None:
        self.sync = RecvSync(channels)
        self.cond = threading.Condition()
        self.latch = latch
        latch.register(self._wake)

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def channel_synced(self, channel_id: int, packet_num: int) -> None:
        """A channel applied its SYNC packet: wait until the main stream releases it."""
        with self.cond:
            epoch = self.sync.epoch
            self.sync.channel_synced(channel_id, packet_num)
            self.cond.notify_all()
            while self.sync.epoch == epoch:
                self.latch.check()
                self.cond.wait(WAIT_SLICE_S)

    def main_eos(self) -> None:
        """The main stream read an EOS: wait for every channel's SYNC, release them all."""
        with self.cond:
            self.sync.main_eos()
            while not self.sync.ready:
                self.latch.check()
                self.cond.wait(WAIT_SLICE_S)
            self.sync.release()
            self.cond.notify_all()


class _ZeroBatch:
    """ZERO records, applied a run at a time: QEMU writes zeros only where the page is not
    zero already (so untouched memory stays untouched); numpy checks a whole batch of pages
    at once instead of one Python comparison per page."""

    def __init__(self, ram: GuestRAM) -> None:
        self.ram = ram
        self.block: str | None = None
        self.offsets: list[int] = []

    def add(self, record: RamZero) -> None:
        if record.block != self.block:
            self.flush()
            self.block = record.block
        self.offsets.append(record.offset)

    def flush(self) -> None:
        if not self.offsets:
            return
        block = self.ram.block(self.block or "")
        assert block is not None  # the decoder checked the name
        pages = np.asarray(self.offsets, dtype=np.int64) // PAGE_SIZE
        self.offsets = []
        clear_nonzero_pages(block, pages)


class RecvChannel:
    """One multifd receive channel and its thread (multifdrecv_<id>)."""

    def __init__(
        self, mig: IncomingMigration, link: Link, decoder: ChannelDecoder, channel_id: int
    ) -> None:
        self.mig = mig
        self.link = link
        self.decoder = decoder
        self.id = channel_id
        self.thread = threading.Thread(
            target=self._run, name=f"multifdrecv_{channel_id}", daemon=True
        )

    def _run(self) -> None:
        mig = self.mig
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        decoder = self.decoder
        try:
            while True:
                # Raw pages (method none) go straight from the socket into guest RAM: read
                # just the header, then the payload into its pages (QEMU's recv thread does
                # the same). Compressed payloads are read in large chunks and decoded.
                size = decoder.needed() if decoder.raw else 0
                n = self.link.recv_into(view[: size or max(READ_CHUNK, decoder.needed())])
                records = decoder.feed(view[:n]) if n else decoder.feed_eof()
                # Apply the whole chunk before honouring a SYNC. The decoder pauses after
                # the SYNC packet, the list's last record; checking ``paused`` after the
                # first record let the barrier go with this epoch's packets unapplied, and
                # they then landed after the next epoch's (stale pages: seen with zstd,
                # whose tiny packets arrive many per read).
                while True:
                    for record in records:
                        self._apply(record)  # type: ignore[arg-type]
                    if (direct := decoder.begin_direct()) is not None:
                        self._place(direct)
                        records = decoder.end_direct()
                        continue
                    if not decoder.paused:
                        break
                    mig.barrier.channel_synced(self.id, self.decoder_packet_num)
                    decoder.release()
                    records = decoder.feed(b"")
                if n == 0:
                    return
        except MultiFDError as err:
            decoder.fail_direct(err)
            mig.latch.fail(err)
        except Exception as err:
            log.exception("multifd receive channel %d failed", self.id)
            mig.latch.fail(MultiFDError(f"multifd {self.id}: internal error: {err!r}"))

    def _place(self, direct: DirectPayload) -> None:
        """Read a raw payload into the packet's pages: the buffered prefix by one copy per
        run, the rest by the socket straight into RAM."""
        block = self.mig.ctx.ram.block(direct.header.ramblock)
        assert block is not None  # the decoder checked the name
        prefix = memoryview(direct.prefix)
        with memoryview(block.mem) as mem:
            for offset, size in offset_runs(direct.header.offsets[: direct.header.normal_pages]):
                take = min(size, len(prefix))
                if take:
                    mem[offset : offset + take] = prefix[:take]
                    prefix = prefix[take:]
                if take < size:
                    self.link.recv_exactly_into(mem[offset + take : offset + size])

    decoder_packet_num = 0

    def _apply(self, packet: ReceivedPacket) -> None:
        self.decoder_packet_num = packet.packet_num
        faults.on_received_packet(self.id)
        header = packet.header
        if not header.normal_pages or packet.placed:
            return
        block = self.mig.ctx.ram.block(header.ramblock)
        assert block is not None  # the decoder checked the name
        mem = block.mem
        for offset, view in packet.runs():  # one copy per run of consecutive pages
            mem[offset : offset + len(view)] = view


class IncomingMigration:
    """One incoming migration, from listening to completed or failed."""

    def __init__(
        self,
        ctx: IncomingContext,
        listener: Listener | ExecSource | FdSource,
        sm: MigrationStateMachine,
        on_finish: Callable[[IncomingMigration], None],
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        self.sm = sm
        self.on_finish = on_finish
        self.latch = ErrorLatch()
        self.latch.register(listener.close)
        # Channel settings are read when the source connects: until then a client may still
        # change them (as with QEMU, which reads them when the channels arrive).
        self.multifd = False
        self.barrier = _Barrier(0, self.latch)
        self.channels: list[RecvChannel] = []
        self.main: Link | None = None
        self.source_runstate: str | None = None
        self.error: str | None = None
        self.cancelled = False  # the machine is shutting down: not a migration failure
        self.postcopy = IncomingPostcopy(self)  # return path and postcopy state
        self.thread = threading.Thread(target=self._run, name="migration_incoming", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def socket_address(self) -> list[dict[str, object]] | None:
        address = self.listener.socket_address()
        return None if address is None else [address]

    @property
    def listening(self) -> bool:
        return self.sm.status is not MigrationStatus.COMPLETED

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._accept_all()
            self.sm.handle(MigrationEvent.CHANNELS_CONNECTED)
            self._load()
            self._finish_ok()
        except MultiFDError as err:
            self.latch.fail(err)
            self._finish_failed()
        except Exception as err:
            log.exception("incoming migration failed unexpectedly")
            self.latch.fail(MultiFDError(f"migemu internal error: {err!r}"))
            self._finish_failed()
        finally:
            self._cleanup()
            self.on_finish(self)

    def _accept(self, name: str) -> Link:
        """One connection; with ``tls-creds``, after its TLS handshake and checks. As in 7.2
        (migration_tls_incoming_handshake), a connection whose TLS fails is reported and
        dropped, and the destination goes on waiting for the next one."""
        from migemu.emulator.migration import tls

        while True:
            link = self.listener.accept(self.latch, name)
            params = self.ctx.settings.parameters
            if not tls.tls_enabled(params):
                return link
            try:
                link.start_tls(tls.server_session(self.ctx.tls_objects or TlsObjects(), params))
                return link
            except TlsError as err:
                link.close()
                if self.ctx.report is not None:
                    self.ctx.report(err.desc)

    def _accept_all(self) -> None:
        self.main = self._accept("main")
        self.multifd = self.ctx.settings.capability("multifd")
        if not self.multifd:
            self.postcopy.accept_preempt(self.listener)  # with postcopy-preempt
            return
        wanted = self.ctx.settings.get("multifd-channels")
        self.barrier = _Barrier(wanted, self.latch)
        blocks = {b.name: b.size for b in self.ctx.ram.blocks}
        method = self.ctx.settings.get("multifd-compression")
        taken: set[int] = set()
        accepted = 0
        while len(taken) < wanted:
            if not self.listener.wait_pending(CHANNEL_TIMEOUT_S):
                raise ProtocolError(
                    f"multifd: the source opened {len(taken)} of {wanted} channels "
                    f"within {CHANNEL_TIMEOUT_S:g} s (are multifd-channels the same on both sides?)"
                )
            link = self._accept(f"multifd{accepted}")
            decoder = ChannelDecoder(method, blocks)
            try:
                greeting = self._read_greeting(link, decoder, accepted)
                try:
                    cid = check_init(
                        greeting, channels=wanted, local_uuid=self.ctx.uuid, taken=taken
                    )
                except ProtocolError as err:
                    raise ProtocolError(INIT_ERROR_PREFIX.format(accepted) + err.desc) from err
            except BaseException:
                link.close()  # not a channel yet: _cleanup would never close it
                raise
            decoder.accept(cid)
            taken.add(cid)
            accepted += 1
            channel = RecvChannel(self, link, decoder, cid)
            self.channels.append(channel)
        for channel in self.channels:
            channel.thread.start()

    def _check_no_extra_channel(self) -> None:
        """At a RAM EOS every channel of the source is connected (its first sync needed
        them): a connection still waiting now is one channel too many -- or a multifd
        channel while multifd is off here. QEMU 7.2 overruns an array or asserts; we fail."""
        if not self.listener.wait_pending(0):
            return
        wanted = self.ctx.settings.get("multifd-channels")
        if not self.multifd:
            raise ProtocolError(NOT_MULTIFD)
        link = self._accept("extra")
        try:
            decoder = ChannelDecoder(self.ctx.settings.get("multifd-compression"), {})
            greeting = self._read_greeting(link, decoder, wanted)
            taken = {c.id for c in self.channels}
            try:
                check_init(greeting, channels=wanted, local_uuid=self.ctx.uuid, taken=taken)
            except ProtocolError as err:
                raise ProtocolError(INIT_ERROR_PREFIX.format(wanted) + err.desc) from err
            raise ProtocolError(INIT_ERROR_PREFIX.format(wanted) + "one channel too many")
        finally:
            link.close()

    def _read_greeting(self, link: Link, decoder: ChannelDecoder, index: int) -> MultiFDInit:
        buf = bytearray(64)
        view = memoryview(buf)
        while True:
            n = link.recv_into(view[: max(1, decoder.needed())])
            if n == 0:
                decoder.feed_eof()
                raise ProtocolError(INIT_ERROR_PREFIX.format(index) + "connection closed")
            for record in decoder.feed(view[:n]):
                if isinstance(record, MultiFDInit):
                    return record

    def _load(self) -> None:
        assert self.main is not None
        decoder = MainStreamDecoder(
            machine=self.ctx.machine_type,
            ram_blocks={b.name: b.size for b in self.ctx.ram.blocks},
            sections=[*QEMU_SECTIONS, *self.ctx.sections],
            uuid=self.ctx.uuid if self.ctx.uuid_set else None,
        )
        while True:
            try:
                self._load_stream(decoder)
                return
            except MultiFDError as err:
                if not self.postcopy.can_pause():
                    raise
                # postcopy_pause_incoming: keep the guest and its pages, wait for a recovery
                self.postcopy.pause(err)
                decoder.resume_at_top()

    def _load_stream(self, decoder: MainStreamDecoder) -> None:
        """Load records from the main channel until the stream is complete."""
        assert self.main is not None
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        zeros = _ZeroBatch(self.ctx.ram)
        postcopy = self.postcopy
        while True:
            n = self.main.recv_into(view)
            records = decoder.feed(view[:n]) if n else decoder.feed_eof()
            for record in records:
                if postcopy.listening and isinstance(record, (RamPage, RamZero)):
                    postcopy.place(record)
                    continue
                if isinstance(record, RamZero) and record.fill == 0:
                    zeros.add(record)
                    continue
                zeros.flush()
                if self._apply(record):
                    return
            zeros.flush()

    def _apply(self, record: object) -> bool:
        """Apply one main-stream record; True once the stream is complete."""
        ram = self.ctx.ram
        if isinstance(record, RamZero):
            block = ram.block(record.block)
            assert block is not None
            page = block.mem[record.offset : record.offset + PAGE_SIZE]
            if record.fill or page != ZERO_PAGE:
                block.mem[record.offset : record.offset + PAGE_SIZE] = (
                    bytes([record.fill]) * PAGE_SIZE
                )
        elif isinstance(record, RamPage):
            block = ram.block(record.block)
            assert block is not None
            block.mem[record.offset : record.offset + PAGE_SIZE] = record.data
        elif isinstance(record, RamEOS):
            self._check_no_extra_channel()
            if self.multifd:
                self.barrier.main_eos()
        elif isinstance(record, GlobalState):
            self.source_runstate = record.runstate
        elif isinstance(record, SectionData):
            if self.ctx.on_section is not None:
                self.ctx.on_section(record)
        elif isinstance(record, Command):
            self.postcopy.command(record)
        elif isinstance(record, VMEOF):
            return self.postcopy.listening  # postcopy: no VM description follows
        elif isinstance(record, VMDescription):
            return True
        return False

    def _finish_ok(self) -> None:
        if self.postcopy.listening:
            self.postcopy.finish_ok()
            return
        vm = self.ctx.vm
        runstate = self.source_runstate
        if runstate is None or runstate == RunState.RUNNING.value:
            if vm.autostart:
                vm.start()
            else:
                vm.set_state(RunState.PAUSED)
        else:
            vm.set_state(RunState(runstate))
        self.sm.handle(MigrationEvent.COMPLETE)
        self.postcopy.finish_ok()  # SHUT(0) on the return path, if there is one

    def _finish_failed(self) -> None:
        err = self.latch.error
        self.error = err.desc if err is not None else "load of migration failed"
        self.sm.try_handle(MigrationEvent.ERROR)

    def _cleanup(self) -> None:
        self.latch.fail(ChannelClosed("incoming migration finished"))
        self.postcopy.close_preempt()
        for channel in self.channels:
            if channel.thread.is_alive():
                channel.thread.join()
            channel.link.close()
        if self.main is not None:
            self.main.close()
        self.listener.close()

    def cancel(self) -> None:
        """Stop listening / loading (used when the machine shuts down)."""
        self.cancelled = True
        self.latch.fail(ChannelClosed("incoming migration cancelled"))
