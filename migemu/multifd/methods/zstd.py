"""The ``zstd`` method: one zstd frame per channel, never ended (flag 0x4; multifd layer).

Like QEMU 7.2: a streaming compressor at the configured level (0 = libzstd's default, 3),
all pages of a packet fed in order and the packet closed with a block flush
(``ZSTD_e_flush``), never ``ZSTD_e_end``, so there is no frame epilogue. The receiver keeps
one decompression stream for the channel's life. Its output goes to a sink that refuses more
than one packet's worth of bytes, which bounds memory against decompression bombs
(``zstandard``'s ``decompressobj`` has no output limit; its ``stream_writer`` does, via the
sink).
"""

from __future__ import annotations

from typing import ClassVar

import zstandard

from migemu.multifd.constants import FLAG_ZSTD, PACKET_BYTES, PAGE_SIZE
from migemu.multifd.errors import CodecError
from migemu.multifd.methods.base import Buffer, Pages, RecvMethod, SendMethod, page_count

# Large enough that a legitimate packet (<= 512 KiB) decodes in a single output buffer, so
# no decoded byte is ever left inside libzstd between packets.
_WRITE_SIZE = PACKET_BYTES + PAGE_SIZE


class ZstdSend(SendMethod):
    name: ClassVar[str] = "zstd"
    flag: ClassVar[int] = FLAG_ZSTD

    def __init__(self, channel_id: int, level: int = 1) -> None:
        if not 0 <= level <= 20:
            raise ValueError(f"zstd level must be 0..20, not {level}")
        super().__init__(channel_id, level)
        self._stream = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, pages: Pages) -> bytes:
        page_count(pages)
        stream = self._stream
        if isinstance(pages, bytes | bytearray | memoryview):
            chunks = [stream.compress(pages)]
        else:
            chunks = [stream.compress(page) for page in pages]
        chunks.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        return b"".join(chunks)


class _Overflow(Exception):
    """Raised by the sink to abort libzstd once a packet produced too many bytes."""


class _Sink:
    """Collects one packet's decoded output, refusing to grow past ``limit``."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise _Overflow
        self.chunks.append(bytes(data))
        return len(data)


class ZstdRecv(RecvMethod):
    name: ClassVar[str] = "zstd"
    flag: ClassVar[int] = FLAG_ZSTD

    def __init__(self, channel_id: int) -> None:
        super().__init__(channel_id)
        self._sink = _Sink()
        self._stream = zstandard.ZstdDecompressor().stream_writer(
            self._sink, write_size=_WRITE_SIZE, write_return_read=True
        )

    def _decompress(self, payload: Buffer, expected: int) -> bytes:
        sink = self._sink
        sink.chunks = []
        sink.size = 0
        sink.limit = expected
        try:
            self._stream.write(payload)
        except _Overflow:
            raise self._excess_error(expected) from None
        except zstandard.ZstdError as err:
            text = str(err)
            name = text.split("error: ", 1)[1] if "error: " in text else text
            raise CodecError(
                f"multifd {self.channel_id}: decompressStream returned {name}"
            ) from err
        if sink.size != expected:
            raise self._size_error(sink.size, expected)
        out = sink.chunks[0] if len(sink.chunks) == 1 else b"".join(sink.chunks)
        sink.chunks = []
        return out
