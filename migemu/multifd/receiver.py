"""The receiving end of one multifd channel, as a sans-IO parser (multifd layer).

``ChannelDecoder.feed(bytes)`` returns records: first the channel's ``MultiFDInit`` (the
caller checks it against the other channels with ``check_init`` and calls ``accept(id)``),
then one ``ReceivedPacket`` per packet with its pages already decompressed and checked.
After a packet carrying SYNC the decoder pauses -- like QEMU's channel thread, which blocks
until the main stream reaches the matching EOS -- and parses nothing more until ``release()``;
buffered bytes come out on the next ``feed`` (``feed(b"")`` is fine). The first error is
kept: every later call raises it again, and nothing more is parsed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from migemu.multifd.constants import (
    FLAG_NOCOMP,
    INIT_SIZE,
    MAX_COMPRESSED_PAYLOAD,
    PACKET_HEADER_WIRE_SIZE,
    PACKET_PAGES,
    PAGE_SIZE,
)
from migemu.multifd.errors import (
    UNEXPECTED_EOF,
    ChannelClosed,
    MultiFDError,
    PeerBroken,
    ProtocolError,
)
from migemu.multifd.init import MultiFDInit, decode_init
from migemu.multifd.methods import RecvMethod, recv_method
from migemu.multifd.packet import PacketHeader, check_flags, check_header, decode_header


@dataclass(frozen=True, slots=True)
class ReceivedPacket:
    """One checked packet. Page ``i`` (``data[i*4096:(i+1)*4096]``) belongs at
    ``header.offsets[i]`` in RAMBlock ``header.ramblock``; ``data`` is empty without pages."""

    header: PacketHeader
    data: bytes
    placed: bool = False  # the pages were read straight into guest RAM: ``data`` is empty

    @property
    def sync(self) -> bool:
        return self.header.sync

    @property
    def packet_num(self) -> int:
        return self.header.packet_num

    def pages(self) -> Iterator[tuple[int, memoryview]]:
        """``(offset, 4 KiB view)`` for each page, in packet order (none once placed)."""
        if self.placed:
            return
        view = memoryview(self.data)
        for index, offset in enumerate(self.header.offsets):
            yield offset, view[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]

    def runs(self) -> Iterator[tuple[int, memoryview]]:
        """``(offset, view)`` for each run of pages with consecutive offsets: one slice
        assignment per run instead of per page (QEMU's packets are mostly one or two runs).
        A placed packet has none: its pages are in RAM already."""
        if self.placed:
            return
        view = memoryview(self.data)
        pos = 0
        for offset, size in offset_runs(self.header.offsets):
            yield offset, view[pos : pos + size]
            pos += size


def offset_runs(offsets: Sequence[int]) -> list[tuple[int, int]]:
    """``(offset, bytes)`` of each run of pages with consecutive offsets, in packet order:
    where a raw (``none``) payload's bytes go, one contiguous piece of RAM per run."""
    runs: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(offsets) + 1):
        if index == len(offsets) or offsets[index] != offsets[index - 1] + PAGE_SIZE:
            runs.append((offsets[start], (index - start) * PAGE_SIZE))
            start = index
    return runs


@dataclass(frozen=True, slots=True)
class DirectPayload:
    """A raw payload the caller reads itself (see ``ChannelDecoder.begin_direct``):
    ``prefix`` is the part already buffered, ``remaining`` the bytes still on the wire."""

    header: PacketHeader
    prefix: bytes
    remaining: int


class _State(enum.Enum):
    GREETING = "greeting"
    WAIT_ACCEPT = "wait-accept"
    HEADER = "header"
    PAYLOAD = "payload"
    DIRECT = "direct"  # a raw payload being read by the caller, not through feed()
    PAUSED = "paused"


class ChannelDecoder:
    """Parses the bytes of one multifd connection.

    ``method`` is the configured ``multifd-compression``; ``blocks`` maps local RAMBlock names
    to used lengths (bytes). ``page_count`` is the local pages-per-packet (128).
    """

    def __init__(
        self,
        method: str,
        blocks: Mapping[str, int],
        *,
        page_count: int = PACKET_PAGES,
        pause_at_sync: bool = True,
    ) -> None:
        self._method_name = method
        recv_method(method, 0)  # validate the name now, not at accept()
        self._blocks = dict(blocks)
        self._page_count = page_count
        self._pause_at_sync = pause_at_sync
        self._buf = bytearray()
        self._pos = 0
        self._state = _State.GREETING
        self._header: PacketHeader | None = None
        self._method: RecvMethod | None = None
        self._error: MultiFDError | None = None
        self.channel_id: int | None = None
        self.greeting: MultiFDInit | None = None
        self._eof = False

    @property
    def paused(self) -> bool:
        """True after a SYNC packet, until ``release()``."""
        return self._state is _State.PAUSED

    @property
    def error(self) -> MultiFDError | None:
        return self._error

    def needed(self) -> int:
        """Bytes still missing before the next record can complete (0 while paused or
        waiting for ``accept``). Never more than 1344 + 1 MiB: a socket layer can read
        exactly this much, and a hostile peer cannot make the decoder wait for more."""
        buffered = len(self._buf) - self._pos
        if self._state is _State.GREETING:
            return max(0, INIT_SIZE - buffered)
        if self._state is _State.HEADER:
            return max(0, PACKET_HEADER_WIRE_SIZE - buffered)
        if self._state is _State.PAYLOAD:
            assert self._header is not None
            return max(0, self._payload_size(self._header) - buffered)
        return 0  # PAUSED, WAIT_ACCEPT, DIRECT: nothing to read through feed()

    @property
    def raw(self) -> bool:
        """Payloads are raw pages (method ``none``): a caller may read them itself."""
        return self._method is not None and self._method.flag == FLAG_NOCOMP

    def begin_direct(self) -> DirectPayload | None:
        """Hand a raw payload to the caller instead of buffering it.

        Only while a ``none`` packet's checked header waits for its payload: the caller
        puts ``prefix`` and then the next ``remaining`` bytes of the connection into RAM at
        the header's offsets (``offset_runs``) and calls ``end_direct()``. QEMU's receive
        thread reads raw pages into guest memory the same way, with no copy in between.
        """
        self._raise_if_failed()
        if self._state is not _State.PAYLOAD or not self.raw:
            return None
        header = self._header
        assert header is not None
        size = self._payload_size(header)
        end = min(len(self._buf), self._pos + size)
        with memoryview(self._buf) as view:
            prefix = bytes(view[self._pos : end])
        self._pos = end
        self._state = _State.DIRECT
        return DirectPayload(header, prefix, size - len(prefix))

    def end_direct(self) -> list[MultiFDInit | ReceivedPacket]:
        """The caller placed the payload: the packet comes out (pages already in RAM),
        followed by whatever else is buffered."""
        self._raise_if_failed()
        if self._state is not _State.DIRECT:
            raise RuntimeError("end_direct() without begin_direct()")
        header = self._header
        assert header is not None
        self._header = None
        self._state = _State.HEADER
        packet = self._deliver(ReceivedPacket(header, b"", placed=True))
        return [packet, *self.feed(b"")]

    def fail_direct(self, err: MultiFDError) -> None:
        """The caller's read of a direct payload failed: the decoder fails with it. A copy
        is kept: the original's traceback holds the caller's views of guest RAM, which
        must not outlive the read (the RAM could not be unmapped)."""
        self._fail(type(err)(err.desc))

    def accept(self, channel_id: int) -> None:
        """The greeting was accepted as channel ``channel_id``: start reading packets."""
        self._raise_if_failed()
        if self._state is not _State.WAIT_ACCEPT:
            raise RuntimeError("accept() is only valid right after the greeting")
        self.channel_id = channel_id
        self._method = recv_method(self._method_name, channel_id)
        self._state = _State.HEADER

    def release(self) -> None:
        """The main stream reached the EOS matching our SYNC: go on parsing."""
        self._raise_if_failed()
        if self._state is _State.PAUSED:
            self._state = _State.HEADER

    def close(self) -> None:
        """We are done with this channel; later calls raise ``ChannelClosed``."""
        if self._error is None:
            self._error = ChannelClosed("multifd channel closed")
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[MultiFDInit | ReceivedPacket]:
        """Add bytes; return every record they complete (possibly none)."""
        self._raise_if_failed()
        if self._state is _State.DIRECT:
            raise RuntimeError("feed() during a direct payload: call end_direct() first")
        if data:
            if self._eof:
                raise RuntimeError("feed() after feed_eof()")
            self._buf += data
        try:
            records = self._parse()
            if self._eof:
                self._check_eof()
        except MultiFDError as err:
            self._fail(err)
            raise
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return records

    def feed_eof(self) -> list[MultiFDInit | ReceivedPacket]:
        """The peer closed the connection; returns the records still buffered. Fine at a
        packet boundary (QEMU's thread ends quietly; the decoder then closes), else
        ``PeerBroken``. While paused at a SYNC (or waiting for ``accept``) the verdict waits:
        the buffered packets come out of ``feed(b"")`` after ``release()``, and the check
        is made then."""
        self._raise_if_failed()
        self._eof = True
        return self.feed(b"")

    def _check_eof(self) -> None:
        if self._state in (_State.PAUSED, _State.WAIT_ACCEPT) and self._pos < len(self._buf):
            return  # decided once the buffered bytes have been parsed
        if self._pos < len(self._buf) or self._state not in (
            _State.HEADER,
            _State.PAUSED,
            _State.WAIT_ACCEPT,
        ):
            raise PeerBroken(UNEXPECTED_EOF)
        if self._state is _State.HEADER:
            self.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise type(self._error)(self._error.desc)

    def _fail(self, err: MultiFDError) -> None:
        if self._error is None:
            self._error = err
        self._buf = bytearray()
        self._pos = 0

    def _take(self, size: int) -> bytes | None:
        end = self._pos + size
        if end > len(self._buf):
            return None
        with memoryview(self._buf) as view:
            chunk = bytes(view[self._pos : end])
        self._pos = end
        return chunk

    def _parse(self) -> list[MultiFDInit | ReceivedPacket]:
        records: list[MultiFDInit | ReceivedPacket] = []
        while True:
            state = self._state
            if state is _State.GREETING:
                raw = self._take(INIT_SIZE)
                if raw is None:
                    return records
                self.greeting = decode_init(raw)
                self._state = _State.WAIT_ACCEPT
                records.append(self.greeting)
            elif state is _State.HEADER:
                raw = self._take(PACKET_HEADER_WIRE_SIZE)
                if raw is None:
                    return records
                records.extend(self._on_header(decode_header(raw)))
            elif state is _State.PAYLOAD:
                header = self._header
                assert header is not None
                raw = self._take(self._payload_size(header))
                if raw is None:
                    return records
                records.append(self._on_payload(header, raw))
            else:  # WAIT_ACCEPT, PAUSED, DIRECT
                return records

    def _payload_size(self, header: PacketHeader) -> int:
        method = self._method
        assert method is not None
        if method.flag == FLAG_NOCOMP:
            # QEMU 7.2 reads the raw pages and ignores next_packet_size for "none".
            return header.normal_pages * PAGE_SIZE
        return header.next_packet_size

    def _on_header(self, header: PacketHeader) -> list[ReceivedPacket]:
        method = self._method
        assert method is not None and self.channel_id is not None
        check_header(header, self._blocks, page_count=self._page_count)
        if header.normal_pages == 0:
            return [self._deliver(ReceivedPacket(header, b""))]
        check_flags(header, self.channel_id, method.flag)
        if method.flag != FLAG_NOCOMP and header.next_packet_size > MAX_COMPRESSED_PAYLOAD:
            raise ProtocolError(
                f"multifd {self.channel_id}: received packet payload of "
                f"{header.next_packet_size} bytes, more than {MAX_COMPRESSED_PAYLOAD}"
            )
        self._header = header
        self._state = _State.PAYLOAD
        return []

    def _on_payload(self, header: PacketHeader, payload: bytes) -> ReceivedPacket:
        method = self._method
        assert method is not None
        data = method.decompress(payload, header.normal_pages)
        self._header = None
        self._state = _State.HEADER
        return self._deliver(ReceivedPacket(header, data))

    def _deliver(self, packet: ReceivedPacket) -> ReceivedPacket:
        if packet.sync and self._pause_at_sync:
            self._state = _State.PAUSED
        return packet
