"""Return-path messages: destination -> source on the main connection (multifd layer).

Only used when the source sent OPEN_RETURN_PATH (``return-path`` or ``postcopy-ram``
capability). Each message is be16 type, be16 length, data. A destination answers each PING
with a PONG carrying the same value and ends with SHUT(0) (SHUT(1) on error); a source
reads them with ``ReturnPathDecoder``. In postcopy the destination asks for pages
(REQ_PAGES_ID: be64 offset, be32 length, counted block name; REQ_PAGES: the same without the
name, for the block last named), and in a recovery it answers RECV_BITMAP with the block's
received-page bitmap (which follows the message on the stream: be64 size, the bitmap in
little-endian longs, be64 end mark) and POSTCOPY_RESUME with RESUME_ACK(1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from migemu.multifd.errors import ProtocolError

RP_SHUT = 1
RP_PONG = 2
RP_REQ_PAGES_ID = 3
RP_REQ_PAGES = 4
RP_RECV_BITMAP = 5
RP_RESUME_ACK = 6

# Fixed lengths (None = variable), as QEMU's rp_cmd_args.
_LENGTHS: dict[int, int | None] = {
    RP_SHUT: 4,
    RP_PONG: 4,
    RP_REQ_PAGES_ID: None,
    RP_REQ_PAGES: 12,
    RP_RECV_BITMAP: None,
    RP_RESUME_ACK: 4,
}
_HEADER = struct.Struct(">HH")
RECV_BITMAP_ENDING = 0x0123456789ABCDEF
RESUME_ACK_VALUE = 1
_REQ = struct.Struct(">QI")


@dataclass(frozen=True, slots=True)
class ReturnPathMessage:
    kind: int
    data: bytes

    bitmap: bytes | None = None  # RECV_BITMAP: the bitmap that followed the message

    @property
    def value(self) -> int:
        """The be32 of SHUT, PONG and RESUME_ACK."""
        return int.from_bytes(self.data[:4], "big")

    def page_request(self) -> tuple[int, int, str | None]:
        """REQ_PAGES(_ID): (byte offset, byte length, block name or None)."""
        if len(self.data) < _REQ.size:
            raise ProtocolError(f"RP: REQ_PAGES message of {len(self.data)} bytes")
        start, length = _REQ.unpack_from(self.data)
        if self.kind != RP_REQ_PAGES_ID:
            return start, length, None
        if len(self.data) < 13 or self.data[12] + 13 != len(self.data):
            raise ProtocolError(
                f"RP: Req_Page_id with length {len(self.data)} expecting at least 13"
            )
        return start, length, self.data[13:].decode("latin-1")

    def block_name(self) -> str:
        """RECV_BITMAP: the counted block name."""
        if not self.data or self.data[0] + 1 > len(self.data):
            raise ProtocolError("RP: Received invalid RECV_BITMAP message")
        return self.data[1 : 1 + self.data[0]].decode("latin-1")


def encode_rp_message(kind: int, data: bytes) -> bytes:
    return _HEADER.pack(kind, len(data)) + data


def encode_rp_pong(value: int) -> bytes:
    return encode_rp_message(RP_PONG, struct.pack(">I", value))


def encode_rp_shut(status: int = 0) -> bytes:
    return encode_rp_message(RP_SHUT, struct.pack(">I", status))


def encode_rp_req_pages(start: int, length: int, block: str | None) -> bytes:
    """REQ_PAGES_ID when ``block`` is named (a new block), else REQ_PAGES."""
    head = _REQ.pack(start, length)
    if block is None:
        return encode_rp_message(RP_REQ_PAGES, head)
    name = block.encode("latin-1")
    return encode_rp_message(RP_REQ_PAGES_ID, head + bytes((len(name),)) + name)


def encode_rp_recv_bitmap(block: str, bitmap: bytes) -> bytes:
    """RECV_BITMAP and the bitmap after it (``bitmap``: little-endian, padded to 8)."""
    name = block.encode("latin-1")
    if len(bitmap) % 8:
        bitmap += bytes(8 - len(bitmap) % 8)
    return (
        encode_rp_message(RP_RECV_BITMAP, bytes((len(name),)) + name)
        + struct.pack(">Q", len(bitmap))
        + bitmap
        + struct.pack(">Q", RECV_BITMAP_ENDING)
    )


def encode_rp_resume_ack(value: int = RESUME_ACK_VALUE) -> bytes:
    return encode_rp_message(RP_RESUME_ACK, struct.pack(">I", value))


MAX_BITMAP_BYTES = 1 << 30


class ReturnPathDecoder:
    """Incremental parser of the return path, as the source reads it."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[ReturnPathMessage]:
        self._buf += data
        out: list[ReturnPathMessage] = []
        pos = 0
        while len(self._buf) - pos >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buf, pos)
            expected = _LENGTHS.get(kind, -1)
            if expected == -1 or (expected is not None and length != expected):
                raise ProtocolError(
                    f"RP: Received invalid message 0x{kind:04x} length 0x{length:04x}"
                )
            end = pos + _HEADER.size + length
            if end > len(self._buf):
                break
            data = bytes(self._buf[pos + _HEADER.size : end])
            bitmap = None
            if kind == RP_RECV_BITMAP:
                if len(self._buf) - end < 8:
                    break
                (size,) = struct.unpack_from(">Q", self._buf, end)
                if size > MAX_BITMAP_BYTES:
                    raise ProtocolError(f"RP: RECV_BITMAP of {size} bytes is too large")
                if len(self._buf) - end < 16 + size:
                    break
                bitmap = bytes(self._buf[end + 8 : end + 8 + size])
                (mark,) = struct.unpack_from(">Q", self._buf, end + 8 + size)
                message = ReturnPathMessage(kind, data)
                if mark != RECV_BITMAP_ENDING:
                    raise ProtocolError(
                        f"ram_dirty_bitmap_reload: ramblock '{message.block_name()}' end mark "
                        f"incorrect: 0x{mark:x}"
                    )
                end += 16 + size
            out.append(ReturnPathMessage(kind, data, bitmap))
            pos = end
        del self._buf[:pos]
        return out
