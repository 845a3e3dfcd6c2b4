"""A bounds-checked cursor over buffered main-stream bytes (multifd layer).

The decoder parses one record at a time from a ``Reader``; when the buffered bytes end
before the record does, the reader raises ``NeedMore`` and the decoder rewinds to the
record's start and waits for more input. All integers are big-endian.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


class NeedMore(Exception):
    """The record continues beyond the bytes received so far."""


class Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | bytearray, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def _advance(self, size: int) -> int:
        pos = self.pos
        if pos + size > self.end:
            raise NeedMore
        self.pos = pos + size
        return pos

    def peek_u8(self, ahead: int = 0) -> int:
        if self.pos + ahead >= self.end:
            raise NeedMore
        return self.buf[self.pos + ahead]

    def u8(self) -> int:
        return self.buf[self._advance(1)]

    def u16(self) -> int:
        return _U16.unpack_from(self.buf, self._advance(2))[0]

    def u32(self) -> int:
        return _U32.unpack_from(self.buf, self._advance(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.buf, self._advance(8))[0]

    def i64(self) -> int:
        return _I64.unpack_from(self.buf, self._advance(8))[0]

    def take(self, size: int) -> bytes:
        pos = self._advance(size)
        return bytes(self.buf[pos : pos + size])

    def str8(self) -> str:
        """A counted string: one length byte, then that many bytes (latin-1, lossless)."""
        return self.take(self.u8()).decode("latin-1")
