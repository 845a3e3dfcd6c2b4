"""multifd send channels: one thread per channel, as QEMU's multifdsend_<id> (emulator layer).

The migration thread hands a packet's pages to the next idle channel, round-robin, waiting
while all are busy; each channel thread compresses with its own stream (kept for the
channel's life) and writes header + payload on its own connection. ``sync()`` is QEMU's
``multifd_send_sync_main``: every channel writes one SYNC packet and the caller waits until
all have, before the main stream may write its EOS. Any failure latches the migration's
error; from then on no channel writes anything, and waiters wake up.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

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
        self.job: Job | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"multifdsend_{channel_id}", daemon=True
        )

    def _run(self) -> None:
        pool = self.pool
        try:
            self.link.send(self.encoder.greeting())
            while True:
                with pool.cond:
                    while self.job is None:
                        pool.cond.wait()
                    job = self.job
                if job.stop:
                    return
                pool.latch.check()
                num = pool.numbers.next()
                header, payload = self.encoder.packet(
                    num, job.ramblock, job.offsets, list(job.pages), sync=job.sync
                )
                self.link.sendv([header, payload])
                pool.stats.add_multifd_wire_bytes(len(header) + len(payload))
                with pool.cond:
                    self.job = None
                    if job.sync:
                        pool.synced.add(self.id)
                    pool.cond.notify_all()
        except MultiFDError as err:
            pool.latch.fail(err)
        except Exception as err:  # a bug: fail the migration, never hang it
            pool.latch.fail(MultiFDError(f"multifd {self.id}: internal error: {err!r}"))
        finally:
            with pool.cond:
                self.job = None
                pool.cond.notify_all()


class ChannelPool:
    """The N send channels of one migration."""

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
        self.cond = threading.Condition()
        self.synced: set[int] = set()
        self.channels = [
            SendChannel(self, i, link, ChannelEncoder(i, method, level, uuid))
            for i, link in enumerate(links)
        ]
        self._next = 0
        latch.register(self._wake)

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def start(self) -> None:
        for channel in self.channels:
            channel.thread.start()

    def _wait(self) -> None:
        self.latch.check()
        self.cond.wait(WAIT_SLICE_S)
        self.latch.check()

    def submit(self, ramblock: str, offsets: Sequence[int], pages: Sequence[Buffer]) -> None:
        """Queue one packet on the next idle channel (round-robin), waiting if none is."""
        job = Job(ramblock, tuple(offsets), tuple(pages))
        n = len(self.channels)
        self.stats.add_multifd_packet(PACKET_HEADER_WIRE_SIZE, len(offsets))
        with self.cond:
            while True:
                for k in range(n):
                    channel = self.channels[(self._next + k) % n]
                    if channel.job is None:
                        channel.job = job
                        self._next = (channel.id + 1) % n
                        self.cond.notify_all()
                        return
                self._wait()

    def sync(self) -> None:
        """Every channel writes one SYNC packet; returns once all of them have."""
        with self.cond:
            self.synced.clear()
            pending = list(self.channels)
            while pending:
                for channel in list(pending):
                    if channel.job is None:
                        channel.job = Job(sync=True)
                        self.stats.add_multifd_packet(PACKET_HEADER_WIRE_SIZE, 0)
                        pending.remove(channel)
                self.cond.notify_all()
                if pending:
                    self._wait()
            while len(self.synced) < len(self.channels):
                self._wait()

    def stop(self) -> None:
        """Let every channel finish its job and end its thread; close the links."""
        with self.cond:
            for channel in self.channels:
                while channel.job is not None and channel.thread.is_alive():
                    if self.latch.failed:
                        break
                    self.cond.wait(WAIT_SLICE_S)
                channel.job = STOP
            self.cond.notify_all()
        for channel in self.channels:
            if channel.thread.is_alive():
                channel.thread.join()
            channel.link.close()
