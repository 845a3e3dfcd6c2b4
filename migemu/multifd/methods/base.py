"""The compression-method interface: one send and one receive object per channel (multifd layer).

A method is created once per channel and lives as long as the channel: zlib and zstd keep one
compression stream for the channel's whole life (later packets refer back to earlier ones), so
an object must never be shared between channels or recreated between packets. ``compress``
turns one packet's pages into one payload; ``decompress`` turns one payload back into exactly
``n_pages`` pages, never producing more (decompression-bomb guard), and raises ``CodecError``
with QEMU's text. After any error the object is broken and refuses further use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from migemu.multifd.constants import PACKET_PAGES, PAGE_SIZE
from migemu.multifd.errors import CodecError

Buffer = bytes | bytearray | memoryview
Pages = Buffer | Sequence[Buffer]


def page_count(pages: Pages) -> int:
    """Number of 4 KiB pages in ``pages`` (a contiguous buffer or a list of page buffers);
    ``ValueError`` if a buffer is not whole pages or there are more than a packet holds."""
    if isinstance(pages, bytes | bytearray | memoryview):
        size = memoryview(pages).nbytes
        if size % PAGE_SIZE:
            raise ValueError(f"buffer of {size} bytes is not a whole number of pages")
        count = size // PAGE_SIZE
    else:
        for page in pages:
            if memoryview(page).nbytes != PAGE_SIZE:
                raise ValueError("every page must be exactly 4096 bytes")
        count = len(pages)
    if count > PACKET_PAGES:
        raise ValueError(f"{count} pages do not fit in one packet ({PACKET_PAGES})")
    return count


class SendMethod(ABC):
    """Compresses the pages of successive packets of one channel."""

    name: ClassVar[str]
    flag: ClassVar[int]

    def __init__(self, channel_id: int, level: int = 1) -> None:
        self.channel_id = channel_id
        self.level = level

    @abstractmethod
    def compress(self, pages: Pages) -> bytes:
        """One packet's payload for ``pages`` (at most 128 pages of 4 KiB, in offset order)."""


class RecvMethod(ABC):
    """Decompresses the payloads of successive packets of one channel."""

    name: ClassVar[str]
    flag: ClassVar[int]

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self._broken: CodecError | None = None

    def decompress(self, payload: Buffer, n_pages: int) -> bytes:
        """Exactly ``n_pages * 4096`` bytes from one payload, or ``CodecError``."""
        if self._broken is not None:
            raise CodecError(self._broken.desc)
        if not 1 <= n_pages <= PACKET_PAGES:
            raise ValueError(f"n_pages must be 1..{PACKET_PAGES}, not {n_pages}")
        try:
            return self._decompress(payload, n_pages * PAGE_SIZE)
        except CodecError as err:
            self._broken = err
            raise

    @abstractmethod
    def _decompress(self, payload: Buffer, expected: int) -> bytes: ...

    def _size_error(self, received: int, expected: int) -> CodecError:
        return CodecError(
            f"multifd {self.channel_id}: packet size received {received} size expected {expected}"
        )

    def _excess_error(self, expected: int) -> CodecError:
        # QEMU stops writing after the last page and silently drops the rest of the payload
        # (desynchronising its stream); we refuse such a packet instead.
        return CodecError(
            f"multifd {self.channel_id}: packet decompresses to more than {expected} bytes"
        )
