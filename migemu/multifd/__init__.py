"""multifd: the migration data path's wire formats and compression methods (layer 3).

Everything here is sans-IO: bytes in, records out, no sockets, threads or asyncio.
- ``init``: the 64-byte MultiFDInit greeting and the receiver's checks.
- ``packet``: the 1344-byte MultiFDPacket header, its flags and checks.
- ``methods``: per-channel none/zlib/zstd send and receive objects.
- ``receiver`` / ``sender``: one multifd channel's byte stream, parsed or built.
- ``sync``: SYNC/EOS bookkeeping between the main stream and the channels.
- ``mainstream``: the main channel (``QEVM``), decoder and encoder.
- ``errors``: the error root and its four kinds.
"""

from __future__ import annotations

from migemu.multifd.constants import (
    FLAG_COMPRESSION_MASK,
    FLAG_NOCOMP,
    FLAG_SYNC,
    FLAG_ZLIB,
    FLAG_ZSTD,
    INIT_SIZE,
    MAX_COMPRESSED_PAYLOAD,
    MULTIFD_MAGIC,
    MULTIFD_VERSION,
    PACKET_BYTES,
    PACKET_HEADER_WIRE_SIZE,
    PACKET_PAGES,
    PAGE_SIZE,
)
from migemu.multifd.errors import (
    UNEXPECTED_EOF,
    ChannelClosed,
    CodecError,
    MultiFDError,
    PeerBroken,
    ProtocolError,
)
from migemu.multifd.init import (
    INIT_ERROR_PREFIX,
    ZERO_UUID,
    MultiFDInit,
    check_init,
    decode_init,
    encode_init,
)
from migemu.multifd.methods import (
    METHOD_FLAGS,
    METHOD_NAMES,
    RecvMethod,
    SendMethod,
    recv_method,
    send_method,
)
from migemu.multifd.packet import (
    PacketHeader,
    check_flags,
    check_header,
    decode_header,
    encode_header,
    make_header,
)
from migemu.multifd.receiver import ChannelDecoder, ReceivedPacket
from migemu.multifd.sender import ChannelEncoder
from migemu.multifd.sync import PacketNumbers, RecvSync, SendSync

__all__ = [
    "FLAG_COMPRESSION_MASK",
    "FLAG_NOCOMP",
    "FLAG_SYNC",
    "FLAG_ZLIB",
    "FLAG_ZSTD",
    "INIT_ERROR_PREFIX",
    "INIT_SIZE",
    "MAX_COMPRESSED_PAYLOAD",
    "METHOD_FLAGS",
    "METHOD_NAMES",
    "MULTIFD_MAGIC",
    "MULTIFD_VERSION",
    "PACKET_BYTES",
    "PACKET_HEADER_WIRE_SIZE",
    "PACKET_PAGES",
    "PAGE_SIZE",
    "UNEXPECTED_EOF",
    "ZERO_UUID",
    "ChannelClosed",
    "ChannelDecoder",
    "ChannelEncoder",
    "CodecError",
    "MultiFDError",
    "MultiFDInit",
    "PacketHeader",
    "PacketNumbers",
    "PeerBroken",
    "ProtocolError",
    "ReceivedPacket",
    "RecvMethod",
    "RecvSync",
    "SendMethod",
    "SendSync",
    "check_flags",
    "check_header",
    "check_init",
    "decode_header",
    "decode_init",
    "encode_header",
    "encode_init",
    "make_header",
    "recv_method",
    "send_method",
]
