"""The ``zlib`` method: one zlib-wrapped deflate stream per channel (flag 0x2; multifd layer).

Like QEMU 7.2: ``deflateInit`` at the configured level (0 = stored, still zlib-wrapped), all
pages of a packet deflated in order and the packet closed with ``Z_SYNC_FLUSH``, so each
payload ends on a byte boundary (``00 00 ff ff``) and the stream is never finished. The
receiver keeps one inflate stream for the channel's life and produces at most one byte more
than the packet's pages (then refuses), so a hostile payload cannot blow up memory.
The sender may deflate with a faster drop-in library (``deflate``: same stream format).
"""

from __future__ import annotations

import re
import zlib as _zlib
from typing import ClassVar

from migemu.multifd.constants import FLAG_ZLIB
from migemu.multifd.errors import CodecError
from migemu.multifd.methods import deflate
from migemu.multifd.methods.base import Buffer, Pages, RecvMethod, SendMethod, page_count

_ERROR_CODE = re.compile(r"Error (-?\d+)")


class ZlibSend(SendMethod):
    name: ClassVar[str] = "zlib"
    flag: ClassVar[int] = FLAG_ZLIB

    def __init__(self, channel_id: int, level: int = 1, backend: str | None = None) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"zlib level must be 0..9, not {level}")
        super().__init__(channel_id, level)
        self.backend = backend or deflate.selected()
        module = deflate.load(self.backend)
        self._stream = module.compressobj(level)
        self._sync_flush = module.Z_SYNC_FLUSH

    def compress(self, pages: Pages) -> bytes:
        page_count(pages)
        stream = self._stream
        if isinstance(pages, bytes | bytearray | memoryview):
            chunks = [stream.compress(pages)]
        else:
            chunks = [stream.compress(page) for page in pages]
        chunks.append(stream.flush(self._sync_flush))
        return b"".join(chunks)


class ZlibRecv(RecvMethod):
    name: ClassVar[str] = "zlib"
    flag: ClassVar[int] = FLAG_ZLIB

    def __init__(self, channel_id: int) -> None:
        super().__init__(channel_id)
        self._stream = _zlib.decompressobj()

    def _decompress(self, payload: Buffer, expected: int) -> bytes:
        stream = self._stream
        try:
            out = stream.decompress(payload, expected + 1)
        except _zlib.error as err:
            match = _ERROR_CODE.search(str(err))
            code = int(match.group(1)) if match else _zlib.Z_DATA_ERROR
            raise CodecError(
                f"multifd {self.channel_id}: inflate returned {code} instead of Z_OK"
            ) from err
        if stream.eof:
            # The sender finished its stream (Z_FINISH): QEMU sees Z_STREAM_END (1).
            raise CodecError(f"multifd {self.channel_id}: inflate returned 1 instead of Z_OK")
        if len(out) > expected or stream.unconsumed_tail:
            raise self._excess_error(expected)
        if len(out) != expected:
            raise self._size_error(len(out), expected)
        return out
