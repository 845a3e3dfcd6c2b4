"""The ``none`` method: the payload is the raw pages in offset order (flag 0x0; multifd layer).

QEMU 7.2's receiver reads ``normal_pages * 4096`` bytes and ignores ``next_packet_size``;
the receive side here just checks that it was given exactly that many bytes.
"""

from __future__ import annotations

from typing import ClassVar

from migemu.multifd.constants import FLAG_NOCOMP
from migemu.multifd.methods.base import Buffer, Pages, RecvMethod, SendMethod, page_count


class NoneSend(SendMethod):
    name: ClassVar[str] = "none"
    flag: ClassVar[int] = FLAG_NOCOMP

    def compress(self, pages: Pages) -> bytes:
        page_count(pages)
        if isinstance(pages, bytes):
            return pages
        if isinstance(pages, bytearray | memoryview):
            return bytes(pages)
        return b"".join(pages)


class NoneRecv(RecvMethod):
    name: ClassVar[str] = "none"
    flag: ClassVar[int] = FLAG_NOCOMP

    def _decompress(self, payload: Buffer, expected: int) -> bytes:
        size = memoryview(payload).nbytes
        if size != expected:
            raise self._size_error(size, expected)
        return payload if isinstance(payload, bytes) else bytes(payload)
