"""The destination side of the return path and of postcopy, as QEMU 7.2 loads it
(emulator layer).

``IncomingPostcopy`` handles the COMMAND records of the main stream for one
``IncomingMigration``: OPEN_RETURN_PATH (answers go back on the main connection, one
writer at a time), PING (a PONG), POSTCOPY_ADVISE (capability and page-size checks),
POSTCOPY_RAM_DISCARD (the pages become missing in a ``PagePresence``), POSTCOPY_LISTEN
(state postcopy-active; the guest now waits for missing pages and asks for them with
REQ_PAGES), POSTCOPY_RUN (the guest starts: RESUME). In postcopy a RAM record fills a page
only while it is missing, and EOF ends the migration: every page is there, SHUT(0) goes
back, state completed. The postcopy states follow ``loadvm_postcopy_*`` in savevm.c.
"""

from __future__ import annotations

import enum
import logging
import threading
from typing import TYPE_CHECKING

from migemu.emulator.guest.presence import PagePresence
from migemu.emulator.migration.link import ErrorLatch, ExecSource, Link, Listener
from migemu.emulator.migration.state import MigrationEvent, MigrationStatus
from migemu.emulator.ram import PAGE_SIZE
from migemu.emulator.runstate import RunState
from migemu.multifd.errors import ChannelClosed, MultiFDError, PeerBroken, ProtocolError
from migemu.multifd.mainstream import postcopy as wire
from migemu.multifd.mainstream.postcopy import PostcopyChannelDecoder
from migemu.multifd.mainstream.records import Command, RamPage, RamZero
from migemu.multifd.mainstream.returnpath import (
    encode_rp_pong,
    encode_rp_recv_bitmap,
    encode_rp_req_pages,
    encode_rp_resume_ack,
    encode_rp_shut,
)

if TYPE_CHECKING:
    from migemu.emulator.migration.incoming import IncomingMigration

log = logging.getLogger(__name__)

ZERO_PAGE = bytes(PAGE_SIZE)
PREEMPT_TIMEOUT_S = 10.0  # QEMU waits forever for a channel the source never opens


class PostcopyState(enum.IntEnum):
    """QEMU's PostcopyState (the destination's postcopy progress), in its order."""

    NONE = 0
    ADVISE = 1
    DISCARD = 2
    LISTENING = 3
    RUNNING = 4
    END = 5


class ReturnPath:
    """The destination's writer on the main connection: one message at a time."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._lock = threading.Lock()
        self._last_block: str | None = None

    def send(self, data: bytes) -> None:
        with self._lock:
            self.link.send(data)

    def request_page(self, block: str, page: int) -> None:
        """migrate_send_rp_message_req_pages: REQ_PAGES_ID when the block changes. Called
        from the vCPU: a broken connection is not its problem (the request is sent again
        after a recovery), so errors are swallowed here."""
        with self._lock:
            named = block if block != self._last_block else None
            try:
                self.link.send(encode_rp_req_pages(page * PAGE_SIZE, PAGE_SIZE, named))
            except MultiFDError:
                return
            self._last_block = block


class IncomingPostcopy:
    """Return path and postcopy state of one incoming migration."""

    def __init__(self, mig: IncomingMigration) -> None:
        self.mig = mig
        self.rp: ReturnPath | None = None
        self.state = PostcopyState.NONE
        self.presence: PagePresence | None = None
        self._recover_lock = threading.Lock()
        self._recover_listener: Listener | None = None
        self._recover_event = threading.Event()
        self._preempt_link: Link | None = None
        self._preempt_thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        """RAM records are loaded the postcopy way (postcopy_is_running)."""
        return self.state >= PostcopyState.LISTENING

    # -- commands ------------------------------------------------------------------------

    def command(self, record: Command) -> None:
        """loadvm_process_command for everything but PACKAGED (the decoder inlines it)."""
        cmd = record.cmd
        if cmd == wire.CMD_OPEN_RETURN_PATH:
            if self.rp is not None:
                raise ProtocolError("CMD_OPEN_RETURN_PATH called when RP already open")
            assert self.mig.main is not None
            self.rp = ReturnPath(self.mig.main)
        elif cmd == wire.CMD_PING:
            value = int.from_bytes(record.data, "big")
            if self.rp is None:
                raise ProtocolError(f"CMD_PING (0x{value:x}) received with no return path")
            self.rp.send(encode_rp_pong(value))
        elif cmd == wire.CMD_POSTCOPY_ADVISE:
            self._advise(record.data)
        elif cmd == wire.CMD_POSTCOPY_RAM_DISCARD:
            self._discard(record.data)
        elif cmd == wire.CMD_POSTCOPY_LISTEN:
            self._listen()
        elif cmd == wire.CMD_POSTCOPY_RUN:
            self._run()
        elif cmd == wire.CMD_PACKAGED:
            pass
        elif cmd == wire.CMD_RECV_BITMAP:
            self._recv_bitmap(record.data)
        elif cmd == wire.CMD_POSTCOPY_RESUME:
            self._resume()
        elif cmd == wire.CMD_ENABLE_COLO:
            raise ProtocolError("migemu does not do COLO")
        else:
            raise ProtocolError(f"migemu cannot handle MIG_CMD {cmd} yet")

    def _settings_postcopy_ram(self) -> bool:
        return bool(self.mig.ctx.settings.capability("postcopy-ram"))

    def _advise(self, data: bytes) -> None:
        if self.state is not PostcopyState.NONE:
            raise ProtocolError(f"CMD_POSTCOPY_ADVISE in wrong postcopy state ({self.state})")
        self.state = PostcopyState.ADVISE
        advise = wire.decode_postcopy_advise(data, postcopy_ram=self._settings_postcopy_ram())
        wire.check_postcopy_advise(advise, PAGE_SIZE, PAGE_SIZE)
        if advise.page_size_summary is not None:
            self._prepare_discard()  # ram_postcopy_incoming_init (and the blocktime context)

    def _prepare_discard(self) -> PagePresence:
        if self.presence is None:
            self.presence = PagePresence(self.mig.ctx.ram.blocks)
        return self.presence

    def _discard(self, data: bytes) -> None:
        if self.state is PostcopyState.ADVISE:
            self._prepare_discard()
            self.state = PostcopyState.DISCARD
        elif self.state is not PostcopyState.DISCARD:
            raise ProtocolError(
                f"CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state ({int(self.state)})"
            )
        discard = wire.decode_ram_discard(data)
        presence = self._prepare_discard()
        block = self.mig.ctx.ram.block(discard.block)
        if block is None:
            raise ProtocolError(f"ram_discard_range: Failed to find block '{discard.block}'")
        for start, length in discard.ranges:
            if start % PAGE_SIZE or length % PAGE_SIZE or start + length > block.size:
                raise ProtocolError(
                    f"ram_block_discard_range: Unaligned start address: 0x{start:x}"
                    if start % PAGE_SIZE
                    else f"ram_block_discard_range: Overrun block '{discard.block}' "
                    f"(0x{start:x}/0x{length:x}/0x{block.size:x})"
                )
            presence.discard(discard.block, start // PAGE_SIZE, length // PAGE_SIZE)

    def _listen(self) -> None:
        if self.state not in (PostcopyState.ADVISE, PostcopyState.DISCARD):
            raise ProtocolError(f"CMD_POSTCOPY_LISTEN in wrong postcopy state ({int(self.state)})")
        self.state = PostcopyState.LISTENING
        presence = self._prepare_discard()
        if self.rp is not None:
            presence.requester = self.rp.request_page
        workload = self.mig.ctx.workload() if self.mig.ctx.workload is not None else None
        if workload is not None:
            workload.set_presence(presence)
        self.mig.sm.handle(MigrationEvent.POSTCOPY_START)

    def _run(self) -> None:
        if self.state is not PostcopyState.LISTENING:
            raise ProtocolError(f"CMD_POSTCOPY_RUN in wrong postcopy state ({int(self.state)})")
        self.state = PostcopyState.RUNNING
        vm = self.mig.ctx.vm
        if vm.autostart:
            vm.start()
        else:
            vm.set_state(RunState.PAUSED)

    def _recv_bitmap(self, data: bytes) -> None:
        """loadvm_handle_recv_bitmap: answer with the block's received-page bitmap."""
        if self.mig.sm.status is not MigrationStatus.POSTCOPY_RECOVER:
            raise ProtocolError("loadvm_handle_recv_bitmap: Only allowed in postcopy recover state")
        name = wire.decode_recv_bitmap_cmd(data)
        if self.mig.ctx.ram.block(name) is None or self.presence is None:
            raise ProtocolError(f"loadvm_handle_recv_bitmap: block '{name}' not found")
        assert self.rp is not None
        self.rp.send(encode_rp_recv_bitmap(name, self.presence.received_bitmap(name)))

    def _resume(self) -> None:
        """loadvm_postcopy_handle_resume: postcopy-active again, RESUME_ACK, and the pages
        the guest waits for are asked for again."""
        if self.mig.sm.status is not MigrationStatus.POSTCOPY_RECOVER:
            self._report("loadvm_postcopy_handle_resume: illegal resume received")
            return
        self.mig.sm.compare_and_set(
            MigrationStatus.POSTCOPY_RECOVER, MigrationEvent.POSTCOPY_RESUMED
        )
        assert self.rp is not None and self.presence is not None
        self.rp.send(encode_rp_resume_ack())
        self.presence.requester = self.rp.request_page
        self.presence.forget_requests()

    # -- pause and recovery --------------------------------------------------------------

    def _report(self, text: str) -> None:
        if self.mig.ctx.report is not None:
            self.mig.ctx.report(text)

    def can_pause(self) -> bool:
        """A failed stream pauses instead of failing once the guest runs here (RAM
        postcopy only, and not while the machine shuts down; multifd channels cannot be
        re-established, so with multifd it fails)."""
        return (
            self.state is PostcopyState.RUNNING
            and self._settings_postcopy_ram()
            and not self.mig.cancelled
            and not self.mig.multifd
            and self.mig.sm.status
            in (MigrationStatus.POSTCOPY_ACTIVE, MigrationStatus.POSTCOPY_RECOVER)
        )

    def pause_request(self) -> None:
        """migrate-pause on the destination: shut the stream down (qemu_file_shutdown)."""
        self.mig.latch.fail(ChannelClosed("Channel was paused"))

    def pause(self, err: MultiFDError) -> None:
        """postcopy_pause_incoming: drop the connection, postcopy-paused, wait until
        ``migrate-recover`` listens and the source connects: postcopy-recover."""
        mig = self.mig
        mig.latch.fail(err)
        if mig.main is not None:
            mig.main.close()
        self.close_preempt()
        self.rp = None
        if self.presence is not None:
            self.presence.requester = None
        mig.sm.handle(MigrationEvent.POSTCOPY_PAUSE)
        self._report("Detected IO failure for postcopy. Migration paused.")
        while True:
            while not self._recover_event.wait(0.05):
                if mig.cancelled:
                    raise ChannelClosed("incoming migration cancelled")
            with self._recover_lock:
                listener = self._recover_listener
                self._recover_event.clear()
            if mig.cancelled:
                raise ChannelClosed("incoming migration cancelled")
            assert listener is not None
            latch = ErrorLatch()
            latch.register(listener.close)
            mig.latch = latch
            try:
                link = listener.accept(latch, "main")
            except MultiFDError:
                continue  # that listener is gone (a newer migrate-recover replaced it)
            mig.main = link
            try:
                self.accept_preempt(listener)
            except MultiFDError:
                link.close()
                continue
            self.rp = ReturnPath(link)  # the same socket carries the return path
            mig.sm.handle(MigrationEvent.POSTCOPY_RECOVER)
            return

    def recover(self, listener: Listener) -> None:
        """migrate-recover: listen on a new address for the source's new connection."""
        with self._recover_lock:
            old, self._recover_listener = self._recover_listener, listener
            self._recover_event.set()
        if old is not None and old is not listener:
            old.close()
        self.mig.listener = listener

    # -- RAM in postcopy -----------------------------------------------------------------

    def place(self, record: RamPage | RamZero) -> None:
        """ram_load_postcopy: a page is written only while it is missing."""
        presence = self.presence
        if presence is None:
            raise ProtocolError("a postcopy page arrived before POSTCOPY_LISTEN")
        page = record.offset // PAGE_SIZE
        if not presence.claim(record.block, page):
            return
        block = self.mig.ctx.ram.block(record.block)
        assert block is not None  # the decoder checked the name
        offset = record.offset
        data = (
            record.data
            if isinstance(record, RamPage)
            else ZERO_PAGE
            if record.fill == 0
            else bytes([record.fill]) * PAGE_SIZE
        )

        def write() -> None:
            block.mem[offset : offset + PAGE_SIZE] = data

        presence.fill(record.block, page, write)

    # -- the postcopy-preempt channel ----------------------------------------------------

    def accept_preempt(self, listener: Listener | ExecSource) -> None:
        """With postcopy-preempt the source's second connection is the postcopy channel
        (migration_ioc_process_incoming): its reader thread places urgent pages."""
        if not self.mig.ctx.settings.capability("postcopy-preempt"):
            return
        if not listener.wait_pending(PREEMPT_TIMEOUT_S):
            raise ProtocolError(
                "postcopy-preempt: the source opened no postcopy channel within "
                f"{PREEMPT_TIMEOUT_S:g} s (is postcopy-preempt on at both sides?)"
            )
        link = listener.accept(self.mig.latch, "postcopy")
        self._preempt_link = link
        self._preempt_thread = threading.Thread(
            target=self._preempt_run, args=(link,), name="postcopy/preempt", daemon=True
        )
        self._preempt_thread.start()

    def _preempt_run(self, link: Link) -> None:
        decoder = PostcopyChannelDecoder({b.name: b.size for b in self.mig.ctx.ram.blocks})
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        try:
            while not decoder.done:
                n = link.recv_into(view)
                if n == 0:
                    raise PeerBroken("postcopy channel closed before its EOS")
                for record in decoder.feed(view[:n]):
                    if isinstance(record, (RamPage, RamZero)):
                        self.place(record)
        except MultiFDError as err:
            link.latch.fail(err)
        except Exception as err:
            log.exception("postcopy preempt channel failed")
            link.latch.fail(MultiFDError(f"migemu internal error: {err!r}"))

    def _join_preempt(self) -> None:
        """postcopy_ram_incoming_cleanup: wait for the preempt channel's EOS."""
        thread = self._preempt_thread
        if thread is None or thread is threading.current_thread():
            return
        while thread.is_alive():
            thread.join(0.05)
            self.mig.latch.check()
        if self._preempt_link is not None:
            self._preempt_link.close()
        self._preempt_thread = None

    def close_preempt(self) -> None:
        if self._preempt_link is not None:
            self._preempt_link.close()
        thread = self._preempt_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    # -- the end -------------------------------------------------------------------------

    def finish_ok(self) -> bool:
        """The stream ended well. Returns True when postcopy handled the completion."""
        if not self.listening:
            if self.rp is not None:
                self.rp.send(encode_rp_shut(0))
            return False
        self._join_preempt()
        self.state = PostcopyState.END
        self._detach()
        self.mig.sm.compare_and_set(MigrationStatus.POSTCOPY_ACTIVE, MigrationEvent.COMPLETE)
        if self.rp is not None:
            self.rp.send(encode_rp_shut(0))
        return True

    def _detach(self) -> None:
        presence = self.presence
        if presence is None:
            return
        presence.fill_all()
        workload = self.mig.ctx.workload() if self.mig.ctx.workload is not None else None
        if workload is not None and workload.presence is presence:
            workload.set_presence(None)

    def blocktime_ms(self) -> int | None:
        """postcopy-blocktime: ms the guest waited for pages; None before postcopy."""
        if self.presence is None:
            return None
        return min(self.presence.blocked_ns // 1_000_000, 0xFFFFFFFF)
