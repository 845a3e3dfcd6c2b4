"""SYNC bookkeeping between the main stream and the multifd channels (multifd layer).

Theory of operation (QEMU 7.2, facts §5.5): for every RAM EOS on the main stream, each channel
carries exactly one packet with the SYNC flag, after that channel's data packets of the same
epoch. The sender marks the next packet of every channel, waits until all channels wrote it,
and only then writes EOS. The receiver stops each channel after its SYNC packet and, when the
main stream reaches EOS, waits until every channel has stopped, then releases them all --
a barrier. These pure objects hold that state; threads or tasks around them do the waiting.
"""

from __future__ import annotations

import itertools

from migemu.multifd.errors import ProtocolError


class PacketNumbers:
    """QEMU's ``packet_num``: one counter for all channels, one value per packet.
    ``next()`` is atomic under the GIL (``itertools.count``)."""

    def __init__(self, start: int = 0) -> None:
        self._count = itertools.count(start)

    def next(self) -> int:
        return next(self._count)


class SendSync:
    """Sender side: which channels still owe a SYNC packet for the current sync point."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._pending: set[int] = set()
        self._owed: set[int] = set()
        self.syncs = 0

    def request(self) -> None:
        """A sync point (``multifd_send_sync_main``): every channel's next packet gets SYNC."""
        if self._owed:
            raise RuntimeError("previous sync point not finished")
        self._pending = set(range(self.channels))
        self._owed = set(range(self.channels))
        self.syncs += 1

    def take_flag(self, channel_id: int) -> bool:
        """Whether the packet ``channel_id`` is about to build carries SYNC (asked once per
        packet; the answer is True at most once per sync point)."""
        if channel_id in self._pending:
            self._pending.discard(channel_id)
            return True
        return False

    def sent(self, channel_id: int) -> None:
        """Channel ``channel_id`` has written its SYNC packet."""
        self._owed.discard(channel_id)

    @property
    def complete(self) -> bool:
        """All channels wrote their SYNC: the main stream may write EOS now."""
        return not self._owed


class RecvSync:
    """Receiver side: the barrier between the main stream's EOS and the channels' SYNCs."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._synced: set[int] = set()
        self._main_waiting = False
        self.epoch = 0
        self.highest_packet_num = 0

    def channel_synced(self, channel_id: int, packet_num: int) -> None:
        """Channel ``channel_id`` applied a SYNC packet and now waits to be released."""
        if not 0 <= channel_id < self.channels:
            raise ValueError(f"no multifd channel {channel_id}")
        if channel_id in self._synced:
            raise ProtocolError(f"multifd {channel_id}: second SYNC before the main stream's EOS")
        self._synced.add(channel_id)
        self.highest_packet_num = max(self.highest_packet_num, packet_num)

    def main_eos(self) -> None:
        """The main stream read an EOS and waits for the channels."""
        self._main_waiting = True

    @property
    def main_waiting(self) -> bool:
        return self._main_waiting

    def waiting_for(self) -> list[int]:
        """Channels whose SYNC has not arrived yet."""
        return [c for c in range(self.channels) if c not in self._synced]

    @property
    def ready(self) -> bool:
        return self._main_waiting and len(self._synced) == self.channels

    def release(self) -> list[int]:
        """If ``ready``: end the epoch and return the channels to release; else ``[]``."""
        if not self.ready:
            return []
        self._synced.clear()
        self._main_waiting = False
        self.epoch += 1
        return list(range(self.channels))
