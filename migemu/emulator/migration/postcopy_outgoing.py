"""The source side of postcopy, as QEMU 7.2's migration thread does it (emulator layer).

``OutgoingPostcopy`` is attached to one ``OutgoingMigration``. With ``return-path`` or
``postcopy-ram`` it opens the return path after the file header (OPEN_RETURN_PATH, PING 1,
and POSTCOPY_ADVISE for postcopy-ram) and reads it in its own thread ("return path": PONG,
SHUT, page requests). Once ``migrate-start-postcopy`` was asked for, the migration thread's
next iteration calls ``run()``: postcopy_start() (state postcopy-active, STOP, a last dirty
sync, the discard commands for every page still to send, PING 2, the PACKAGED device state
with LISTEN ... RUN, PING 4), then the postcopy stream: pages the destination asked for go
first, the background scan follows on from the last requested page (as QEMU's
``last_seen_block``/``last_page`` do), sections of at most 50 ms, ``max-postcopy-bandwidth``
per 100 ms window (requested pages are never held back by it). When every page is sent: an
END section, EOF, and completion once the destination's SHUT arrived.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from migemu.emulator.guest.dirty import mask_runs
from migemu.emulator.guest.zero import split_zero_runs
from migemu.emulator.migration import faults
from migemu.emulator.migration.link import ConnectError, ErrorLatch, Link, connect
from migemu.emulator.migration.state import MigrationEvent, MigrationStatus
from migemu.emulator.migration.uri import MigrationAddress
from migemu.emulator.ram import PAGE_SIZE
from migemu.emulator.runstate import RunState
from migemu.multifd.errors import ChannelClosed, MultiFDError, PeerBroken, ProtocolError
from migemu.multifd.mainstream import MainStreamEncoder
from migemu.multifd.mainstream import postcopy as wire
from migemu.multifd.mainstream.returnpath import (
    RESUME_ACK_VALUE,
    RP_PONG,
    RP_RECV_BITMAP,
    RP_REQ_PAGES,
    RP_REQ_PAGES_ID,
    RP_RESUME_ACK,
    RP_SHUT,
    ReturnPathDecoder,
)

if TYPE_CHECKING:
    from migemu.emulator.migration.outgoing import MainWriter, OutgoingMigration

log = logging.getLogger(__name__)

BUFFER_DELAY_S = 0.1
MAX_ITERATE_S = 0.05
XFER_LIMIT_RATIO = 10  # 1000 / BUFFER_DELAY: max-postcopy-bandwidth per 100 ms window
BACKGROUND_CHUNK_PAGES = 64
RP_READ = 64 * 1024
SHUT_TIMEOUT_S = 30.0


class OutgoingPostcopy:
    """Return path and postcopy phase of one outgoing migration."""

    def __init__(self, mig: OutgoingMigration) -> None:
        self.mig = mig
        caps = mig.caps
        self.enabled = bool(caps.get("postcopy-ram"))
        self.return_path = self.enabled or bool(caps.get("return-path"))
        self.preempt = self.enabled and bool(caps.get("postcopy-preempt"))
        self._preempt_link: Link | None = None
        self._preempt_writer: MainWriter | None = None
        self._preempt_encoder = MainStreamEncoder(mig.ctx.machine_type)
        self.start_requested = threading.Event()
        self.active = False
        self._queue: collections.deque[tuple[str, int, int]] = collections.deque()
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._shut = threading.Event()
        self.shut_status: int | None = None
        self._rp_block: str | None = None
        self._rp_thread: threading.Thread | None = None
        self._rp_done = False
        # recovery: the address of ``migrate resume:true`` and the handshake's answers
        self._resume_lock = threading.Lock()
        self._resume_address: MigrationAddress | None = None
        self._resume_event = threading.Event()
        self._bitmaps: dict[str, bytes] = {}
        self._bitmap_event = threading.Event()
        self._resume_ack = threading.Event()
        self._package_sent = False

    # -- setup ---------------------------------------------------------------------------

    def after_header(self) -> None:
        """migration_thread after qemu_savevm_state_header(): return path and ADVISE."""
        if not self.return_path:
            return
        mig = self.mig
        assert mig.writer is not None and mig.main is not None
        mig.writer.other(wire.encode_open_return_path() + wire.encode_ping(1))
        if self.enabled:
            mig.writer.other(wire.encode_postcopy_advise(PAGE_SIZE, PAGE_SIZE))
        self._start_rp(mig.main, mig.latch)
        if self.preempt:
            self._connect_preempt(mig.address, mig.latch)

    def _connect_preempt(self, address: MigrationAddress, latch: ErrorLatch) -> None:
        """postcopy_preempt_setup: the postcopy channel, the source's second connection
        (no greeting: the destination knows it by its order). Urgent pages go there."""
        from migemu.emulator.migration.outgoing import MainWriter

        link = connect(address, latch, "postcopy")
        self._preempt_link = link
        self._preempt_writer = MainWriter(link, self.mig.stats)
        self._preempt_encoder.reset_block()

    def _start_rp(self, link: Link, latch: ErrorLatch) -> None:
        self._shut.clear()
        self._rp_done = False
        self._rp_block = None
        self._rp_thread = threading.Thread(
            target=self._rp_run, args=(link, latch), name="return path", daemon=True
        )
        self._rp_thread.start()

    def wanted(self, pending: int, threshold: int) -> bool:
        """migration_iteration_run: switch to postcopy when asked and not converging."""
        return (
            self.enabled and self.start_requested.is_set() and pending > 0 and pending >= threshold
        )

    # -- the return path -----------------------------------------------------------------

    def _rp_run(self, link: Link, latch: ErrorLatch) -> None:
        decoder = ReturnPathDecoder()
        buf = bytearray(RP_READ)
        view = memoryview(buf)
        try:
            while True:
                n = link.recv_into(view)
                if n == 0:
                    if not self._shut.is_set():
                        raise PeerBroken("RP: return path closed before SHUT")
                    return
                for message in decoder.feed(view[:n]):
                    self._on_rp(message.kind, message)
        except MultiFDError as err:
            if not self._shut.is_set() and not self._rp_done:
                latch.fail(err)
        except Exception as err:
            log.exception("return path failed")
            latch.fail(MultiFDError(f"migemu internal error: {err!r}"))
        finally:
            self._wake.set()

    def _on_rp(self, kind: int, message: object) -> None:
        from migemu.multifd.mainstream.returnpath import ReturnPathMessage

        assert isinstance(message, ReturnPathMessage)
        if kind == RP_SHUT:
            self.shut_status = message.value
            self._shut.set()
        elif kind == RP_PONG:
            pass
        elif kind in (RP_REQ_PAGES, RP_REQ_PAGES_ID):
            start, length, name = message.page_request()
            if name is not None:
                self._rp_block = name
            block_name = self._rp_block
            if block_name is None:
                raise ProtocolError("RP: REQ_PAGES without a RAMBlock name")
            block = self.mig.ctx.ram.block(block_name)
            if block is None:
                raise ProtocolError(f"MIG_RP_MSG_REQ_PAGES has no block '{block_name}'")
            if start % PAGE_SIZE or start + length > block.size or length == 0:
                raise ProtocolError(
                    f"ram_save_queue_pages request overrun, start=0x{start:x} "
                    f"len=0x{length:x} blen=0x{block.size:x}"
                )
            self.mig.stats.add_postcopy_request()
            with self._queue_lock:
                self._queue.append((block_name, start // PAGE_SIZE, -(-length // PAGE_SIZE)))
            self._wake.set()
        elif kind == RP_RESUME_ACK:
            if message.value != RESUME_ACK_VALUE:
                raise ProtocolError(f"RP: resume ack with invalid value {message.value}")
            self._resume_ack.set()
            self._bitmap_event.set()
        elif kind == RP_RECV_BITMAP:
            name = message.block_name()
            block = self.mig.ctx.ram.block(name)
            if block is None:
                raise ProtocolError(f"RP: invalid block name '{name}'")
            assert message.bitmap is not None
            expected = ((block.pages + 7) // 8 + 7) // 8 * 8
            if len(message.bitmap) != expected:
                raise ProtocolError(
                    f"ram_dirty_bitmap_reload: ramblock '{name}' bitmap size mismatch "
                    f"(0x{len(message.bitmap):x} != 0x{expected:x})"
                )
            self._bitmaps[name] = message.bitmap
            self._bitmap_event.set()
        else:
            raise ProtocolError(f"RP: Received invalid message 0x{kind:04x}")

    def await_shut(self) -> None:
        """await_return_path_close_on_source: completion waits for the destination's SHUT;
        EOF without it, or SHUT with an error, fails the migration."""
        if not self.return_path:
            return
        mig = self.mig
        deadline = time.monotonic() + SHUT_TIMEOUT_S
        while not self._shut.wait(0.05):
            mig.latch.check()
            if time.monotonic() > deadline:
                raise PeerBroken("RP: the destination never sent SHUT")
        mig.latch.check()
        if self.shut_status:
            raise PeerBroken(f"RP: Sibling indicated error {self.shut_status}")
        self._rp_done = True

    def stop(self) -> None:
        """Cleanup: the main link is closed by then; the reader ends."""
        self._rp_done = True
        if self._preempt_link is not None:
            self._preempt_link.close()
            self._preempt_link = None
            self._preempt_writer = None
        thread = self._rp_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    # -- postcopy ------------------------------------------------------------------------

    def run(self) -> None:
        """postcopy_start(), the postcopy iterations and migration_completion(); a broken
        stream after the device state went out pauses (postcopy_pause) until a recovery."""
        mig = self.mig
        if not mig.sm.compare_and_set(MigrationStatus.ACTIVE, MigrationEvent.POSTCOPY_START):
            mig.latch.check()
            return
        self.active = True
        self._switchover()
        while True:
            try:
                self._stream()
                self._complete()
                return
            except MultiFDError as err:
                if not self._can_pause(err):
                    raise
                self._pause()

    def _can_pause(self, err: MultiFDError) -> bool:
        from migemu.emulator.migration.outgoing import CANCELLED_DESC

        mig = self.mig
        error = mig.latch.error
        desc = error.desc if error is not None else err.desc
        return (
            self._package_sent
            and desc != CANCELLED_DESC
            and mig.pool is None  # multifd channels cannot be re-established in 7.2
            and mig.sm.status in (MigrationStatus.POSTCOPY_ACTIVE, MigrationStatus.POSTCOPY_RECOVER)
        )

    def pause_request(self) -> None:
        """migrate-pause on the source: shut the stream down (qemu_file_shutdown)."""
        self.mig.latch.fail(ChannelClosed("Channel was paused"))

    def resume(self, address: MigrationAddress) -> None:
        """migrate resume:true: reconnect to ``address`` and recover."""
        with self._resume_lock:
            self._resume_address = address
        self._resume_event.set()

    def _report(self, text: str) -> None:
        if self.mig.ctx.report is not None:
            self.mig.ctx.report(text)

    def _pause(self) -> None:
        """postcopy_pause: drop the connection, postcopy-paused, wait for ``migrate
        resume:true``, then the recovery handshake; a failed handshake pauses again."""
        from migemu.emulator.migration.outgoing import CANCELLED_DESC

        mig = self.mig
        broken = True
        while True:
            if broken:
                if mig.main is not None:
                    mig.main.close()
                self.stop()
                if not mig.sm.compare_and_set(mig.sm.status, MigrationEvent.POSTCOPY_PAUSE):
                    raise ChannelClosed(CANCELLED_DESC)
                self._report("Detected IO failure for postcopy. Migration paused.")
            broken = True
            while not self._resume_event.wait(0.05):
                if mig.sm.status is not MigrationStatus.POSTCOPY_PAUSED:
                    raise ChannelClosed(CANCELLED_DESC)  # migrate_cancel
            with self._resume_lock:
                address = self._resume_address
                self._resume_event.clear()
            assert address is not None
            try:
                self._recover(address)
                return
            except ConnectError as err:
                # 7.2 fails the migration here (migrate_fd_error); migemu stays paused:
                # a failed reconnect must not throw the guest's RAM away
                self._report(err.desc)
                broken = False
                continue
            except MultiFDError as err:
                if mig.sm.status is not MigrationStatus.POSTCOPY_RECOVER:
                    raise ChannelClosed(CANCELLED_DESC) from err
                self._report(f"postcopy_do_resume: handshake failed: {err.desc}")
                continue

    def _recover(self, address: MigrationAddress) -> None:
        """migrate_fd_connect(resume) + postcopy_do_resume: a new main channel (no header,
        no OPEN_RETURN_PATH), RECV_BITMAP per block, every page the destination lacks
        pending again, POSTCOPY_RESUME, and postcopy-active once RESUME_ACK came back."""
        from migemu.emulator.migration.outgoing import MainWriter

        mig = self.mig
        latch = ErrorLatch()
        link = connect(address, latch, "main")
        mig.latch = latch
        mig.main = link
        mig.writer = writer = MainWriter(link, mig.stats)
        if self.preempt:
            self._connect_preempt(address, latch)
        if not mig.sm.compare_and_set(
            MigrationStatus.POSTCOPY_PAUSED, MigrationEvent.POSTCOPY_RECOVER
        ):
            raise ChannelClosed("migration cancelled")
        self._bitmaps = {}
        self._bitmap_event.clear()
        self._resume_ack.clear()
        self._start_rp(link, latch)
        blocks = mig.ctx.ram.blocks
        for block in blocks:
            writer.other(wire.encode_recv_bitmap(block.name))
        writer.flush()
        self._wait(lambda: len(self._bitmaps) == len(blocks), "RECV_BITMAP")
        for block in blocks:
            raw = np.frombuffer(self._bitmaps[block.name], dtype=np.uint8)
            received = np.unpackbits(raw, bitorder="little")[: block.pages].astype(np.bool_)
            mig.pending[block.name] = ~received
            mig.cursor[block.name] = 0
        mig.encoder.reset_block()
        with self._queue_lock:
            self._queue.clear()
        writer.other(wire.encode_postcopy_resume())
        writer.flush()
        self._wait(self._resume_ack.is_set, "RESUME_ACK")
        if not mig.sm.compare_and_set(
            MigrationStatus.POSTCOPY_RECOVER, MigrationEvent.POSTCOPY_RESUMED
        ):
            raise ChannelClosed("migration cancelled")

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + SHUT_TIMEOUT_S
        while not done():
            self.mig.latch.check()
            if time.monotonic() > deadline:
                raise PeerBroken(f"postcopy recovery: no {what} from the destination")
            self._bitmap_event.wait(0.02)
            self._bitmap_event.clear()

    def _switchover(self) -> None:
        mig = self.mig
        writer = mig.writer
        assert writer is not None
        vm = mig.ctx.vm
        mig.vm_was_running = vm.running
        runstate = vm.state.value
        mig.stats.vm_stopped()
        if vm.running:
            vm.stop(RunState.FINISH_MIGRATE)
            mig.stopped_vm = True
        else:
            vm.set_state(RunState.FINISH_MIGRATE)
        if mig.pool is not None:
            mig.pool.sync()  # multifd pages of precopy land before the discards
        mig._bitmap_sync()
        discards = []
        for block in mig.ctx.ram.blocks:
            ranges = [
                (first * PAGE_SIZE, n * PAGE_SIZE)
                for first, n in mask_runs(mig.pending[block.name])
            ]
            discards.append(wire.encode_ram_discard(block.name, ranges))
            mig.cursor[block.name] = 0
        mig.encoder.reset_block()
        writer.other(b"".join(discards))
        writer.other(wire.encode_ping(2))
        enc = mig.encoder
        package = [wire.encode_postcopy_listen(), enc.timer()]
        package += [section.encode(enc) for section in mig.ctx.device_sections]
        package += [enc.globalstate(runstate), wire.encode_ping(3), wire.encode_postcopy_run()]
        writer.other(wire.encode_packaged(b"".join(package)))
        writer.flush()
        self._package_sent = True
        faults.phase(faults.Phase.POSTCOPY)
        mig.stats.postcopy_started()
        writer.other(wire.encode_ping(4))
        writer.flush()

    def _pending_pages(self) -> int:
        return sum(int(np.count_nonzero(p)) for p in self.mig.pending.values())

    def _budget(self) -> int | None:
        bandwidth = self.mig.ctx.settings.get("max-postcopy-bandwidth")
        return None if not bandwidth else max(1, bandwidth // XFER_LIMIT_RATIO)

    def _stream(self) -> None:
        mig = self.mig
        writer = mig.writer
        assert writer is not None
        window_start = time.monotonic()
        used = 0
        while True:
            mig.latch.check()
            left = self._pending_pages()
            mig.stats.set_remaining(left * PAGE_SIZE)
            if left == 0:
                return
            writer.ram(mig.encoder.ram_part(), vm_running=False)
            deadline = time.monotonic() + MAX_ITERATE_S
            while time.monotonic() < deadline:
                mig.latch.check()
                sent = self._send_requested()
                budget = self._budget()
                if budget is not None and used >= budget:
                    if not sent:
                        break
                    continue
                n = self._send_background()
                used += n
                if n == 0 and not sent:
                    break
            self._close_section()
            budget = self._budget()
            now = time.monotonic()
            if budget is not None and used >= budget:
                end = window_start + BUFFER_DELAY_S
                while now < end and not self._has_requests():
                    self._wake.wait(end - now)
                    self._wake.clear()
                    mig.latch.check()
                    now = time.monotonic()
                if now >= end:
                    window_start, used = now, 0
            elif now >= window_start + BUFFER_DELAY_S:
                window_start, used = now, 0

    def _close_section(self) -> None:
        mig = self.mig
        assert mig.writer is not None
        if mig.pool is not None:
            mig.pool.sync()
        mig.writer.ram(mig.encoder.ram_close(), vm_running=False)
        mig.writer.flush()

    def _has_requests(self) -> bool:
        with self._queue_lock:
            return bool(self._queue)

    def _send_requested(self) -> int:
        """get_queued_page(): requested pages still dirty, sent now; the scan goes on
        after the last of them."""
        sent = 0
        while True:
            with self._queue_lock:
                if not self._queue:
                    break
                name, first, n = self._queue.popleft()
            pending = self.mig.pending[name]
            for page in range(first, min(first + n, len(pending))):
                if pending[page]:
                    sent += self._send_pages(name, page, 1, urgent=True)
            self.mig.cursor[name] = min(first + n, len(pending))
        if sent:
            writer = self._preempt_writer or self.mig.writer
            assert writer is not None
            writer.flush()
        return sent

    def _chunk_pages(self) -> int:
        """Pages per background step: a rate-limit window's worth at most, at least 1
        (QEMU checks the limit after each host page)."""
        budget = self._budget()
        if budget is None:
            return BACKGROUND_CHUNK_PAGES
        return max(1, min(BACKGROUND_CHUNK_PAGES, budget // PAGE_SIZE))

    def _send_background(self) -> int:
        """Up to BACKGROUND_CHUNK_PAGES pending pages from the cursor on (wrapping)."""
        mig = self.mig
        for block in mig.ctx.ram.blocks:
            pending = mig.pending[block.name]
            start = mig.cursor[block.name]
            for lo, hi in ((start, block.pages), (0, start)):
                hits = np.flatnonzero(pending[lo:hi])
                if len(hits):
                    first = lo + int(hits[0])
                    run = pending[first : min(first + self._chunk_pages(), hi)]
                    ends = np.flatnonzero(~run)
                    n = int(ends[0]) if len(ends) else len(run)
                    nbytes = self._send_pages(block.name, first, n)
                    mig.cursor[block.name] = first + n
                    return nbytes
            mig.cursor[block.name] = 0
        return 0

    def _send_pages(self, name: str, first: int, n: int, *, urgent: bool = False) -> int:
        """Pages [first, first+n) of ``name`` as ZERO or PAGE records, on the main stream
        or (``urgent``, with postcopy-preempt) the postcopy channel; returns the bytes."""
        mig = self.mig
        writer = mig.writer
        encoder = mig.encoder
        if urgent and self._preempt_writer is not None:
            writer, encoder = self._preempt_writer, self._preempt_encoder
        assert writer is not None
        block = mig.ctx.ram.block(name)
        assert block is not None
        view = block.view()
        total = 0
        for sub_first, sub_n, is_zero in split_zero_runs(view, first, n):
            offsets = [p * PAGE_SIZE for p in range(sub_first, sub_first + sub_n)]
            if is_zero:
                data = encoder.ram_zero_pages(name, offsets)
                mig.stats.add_zero_pages(sub_n)
            else:
                data = b"".join(encoder.ram_page(name, o, view[o : o + PAGE_SIZE]) for o in offsets)
                mig.stats.add_normal_pages(sub_n)
            writer.ram(data, vm_running=False)
            total += len(data)
        mig.pending[name][first : first + n] = False
        return total

    def _complete(self) -> None:
        """migration_completion() in postcopy: END section, EOF, SHUT, completed."""
        mig = self.mig
        writer = mig.writer
        assert writer is not None
        writer.ram(mig.encoder.ram_end(), vm_running=False)
        mig.stats.set_remaining(0)
        self._close_section()
        writer.other(mig.encoder.eof())
        writer.flush()
        if self._preempt_writer is not None:  # postcopy_preempt_shutdown_file
            self._preempt_writer.other(wire.encode_preempt_eos())
            self._preempt_writer.flush()
        if mig.pool is not None:
            mig.pool.stop()
            mig.pool = None
        self.await_shut()
        if mig.sm.compare_and_set(MigrationStatus.POSTCOPY_ACTIVE, MigrationEvent.COMPLETE):
            mig.ctx.vm.set_state(RunState.POSTMIGRATE)
            mig.stats.complete()
        try:
            mig.latch.check()
        except ChannelClosed:
            pass
