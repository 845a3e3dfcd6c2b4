"""multifd send channels: one thread per channel, as QEMU's multifdsend_<id> (emulator layer).

The migration thread hands a packet's pages to an idle channel (the longest idle), waiting
while all are busy; each channel thread compresses with its own stream (kept for the
channel's life) and writes header + payload on its own connection. ``sync()`` is QEMU's
``multifd_send_sync_main``: every channel writes one SYNC packet and the caller waits until
all have, before the main stream may write its EOS. Any failure latches the migration's
error; from then on no channel writes anything, and waiters wake up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from migemu.emulator.migration import faults
from migemu.emulator.migration.link import ErrorLatch, Link
from migemu.emulator.migration.stats import MigrationStats
from migemu.multifd.constants import PACKET_HEADER_WIRE_SIZE
from migemu.multifd.errors import MultiFDError
from migemu.multifd.sender import ChannelEncoder
from migemu.multifd.sync import PacketNumbers

Buffer = bytes | bytearray | memoryview
WAIT_SLICE_S = 0.05  # how often blocked waiters re-check the latch


@dataclass(frozen=True)
class Job:
    ramblock: str = ""
    offsets: tuple[int, ...] = ()
    pages: tuple[Buffer, ...] = ()
    sync: bool = False
    stop: bool = False


STOP = Job(stop=True)


class SendChannel:
    """One multifd channel: its link, its encoder (compression stream) and its thread."""

    def __init__(
        self, pool: ChannelPool, channel_id: int, link: Link, encoder: ChannelEncoder
    ) -> None:
        self.pool = pool
        self.id = channel_id
        self.link = link
        self.encoder = encoder
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._run, name=f"multifdsend_{channel_id}", daemon=True
        )

    def _run(self) -> None:
        pool = self.pool
        try:
            self.link.send(self.encoder.greeting())
            while True:
                job = self.jobs.get()
                if job.stop:
                    return
                pool.latch.check()
                num = pool.numbers.next()
                header, payload = self.encoder.packet(
                    num, job.ramblock, job.offsets, list(job.pages), sync=job.sync
                )
                header, payload = faults.on_packet(self, header, payload)
                self.link.sendv([header, payload])
                pool.stats.add_multifd_wire_bytes(len(header) + len(payload))
                pool.idle.put(self.id)  # ready for the next packet
        except MultiFDError as err:
            pool.latch.fail(err)
        except Exception as err:  # a bug: fail the migration, never hang it
            pool.latch.fail(MultiFDError(f"multifd {self.id}: internal error: {err!r}"))


class ChannelPool:
    """The N send channels of one migration.

    Each channel has its own job queue, and ``idle`` holds the ids of channels with nothing
    to do: a submit takes an idle channel (waiting while there is none), the channel puts
    its id back when its packet is written. No shared condition variable, so a finished
    packet wakes exactly one waiter.
    """

    def __init__(
        self,
        links: Sequence[Link],
        method: str,
        level: int,
        latch: ErrorLatch,
        stats: MigrationStats,
        uuid: bytes,
    ) -> None:
        self.latch = latch
        self.stats = stats
        self.numbers = PacketNumbers()
        self.idle: queue.Queue[int] = queue.Queue()
        self.channels = [
            SendChannel(self, i, link, ChannelEncoder(i, method, level, uuid))
            for i, link in enumerate(links)
        ]
        for channel in self.channels:
            self.idle.put(channel.id)

    def start(self) -> None:
        for channel in self.channels:
            channel.thread.start()

    def _take_idle(self) -> int:
        while True:
            self.latch.check()
            try:
                return self.idle.get(timeout=WAIT_SLICE_S)
            except queue.Empty:
                continue

    def submit(self, ramblock: str, offsets: Sequence[int], pages: Sequence[Buffer]) -> None:
        """Queue one packet on an idle channel, waiting if none is."""
        self.stats.add_multifd_packet(PACKET_HEADER_WIRE_SIZE, len(offsets))
        cid = self._take_idle()
        self.channels[cid].jobs.put(Job(ramblock, tuple(offsets), tuple(pages)))

    def sync(self) -> None:
        """Every channel writes one SYNC packet after its pending one; returns once all of
        them have (QEMU's multifd_send_sync_main)."""
        n = len(self.channels)
        for _ in range(n):  # every channel idle: its earlier packets are out
            self._take_idle()
        for channel in self.channels:
            self.stats.add_multifd_packet(PACKET_HEADER_WIRE_SIZE, 0)
            channel.jobs.put(Job(sync=True))
        for _ in range(n):  # every SYNC written
            self._take_idle()
        for channel in self.channels:
            self.idle.put(channel.id)

    def stop(self) -> None:
        """Let every channel finish its packet and end its thread; close the links."""
        for channel in self.channels:
            channel.jobs.put(STOP)
        for channel in self.channels:
            if channel.thread.is_alive():
                channel.thread.join()
            channel.link.close()
