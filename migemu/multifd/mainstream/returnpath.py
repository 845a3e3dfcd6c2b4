"""Return-path messages: destination -> source on the main connection (multifd layer).

Only used when the source sent OPEN_RETURN_PATH (``return-path`` or ``postcopy-ram``
capability). Each message is be16 type, be16 length, data. A destination answers each PING
with a PONG carrying the same value and ends with SHUT(0) (SHUT(1) on error); a source
reads them with ``ReturnPathDecoder``. Postcopy messages are parsed but not interpreted.
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


@dataclass(frozen=True, slots=True)
class ReturnPathMessage:
    kind: int
    data: bytes

    @property
    def value(self) -> int:
        """The be32 of SHUT, PONG and RESUME_ACK."""
        return int.from_bytes(self.data[:4], "big")


def encode_rp_message(kind: int, data: bytes) -> bytes:
    return _HEADER.pack(kind, len(data)) + data


def encode_rp_pong(value: int) -> bytes:
    return encode_rp_message(RP_PONG, struct.pack(">I", value))


def encode_rp_shut(status: int = 0) -> bytes:
    return encode_rp_message(RP_SHUT, struct.pack(">I", status))


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
            out.append(ReturnPathMessage(kind, bytes(self._buf[pos + _HEADER.size : end])))
            pos = end
        del self._buf[:pos]
        return out
