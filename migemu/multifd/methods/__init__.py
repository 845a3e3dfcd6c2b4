"""The multifd compression methods ``none``, ``zlib`` and ``zstd`` (multifd layer).

``send_method(name, channel_id, level)`` and ``recv_method(name, channel_id)`` build the
per-channel objects; ``METHOD_FLAGS`` maps each ``multifd-compression`` value to its packet
flag.
"""

from __future__ import annotations

from migemu.multifd.methods.base import Buffer, Pages, RecvMethod, SendMethod, page_count
from migemu.multifd.methods.none import NoneRecv, NoneSend
from migemu.multifd.methods.zlib import ZlibRecv, ZlibSend
from migemu.multifd.methods.zstd import ZstdRecv, ZstdSend

_SEND: dict[str, type[SendMethod]] = {"none": NoneSend, "zlib": ZlibSend, "zstd": ZstdSend}
_RECV: dict[str, type[RecvMethod]] = {"none": NoneRecv, "zlib": ZlibRecv, "zstd": ZstdRecv}

METHOD_FLAGS: dict[str, int] = {name: cls.flag for name, cls in _SEND.items()}
METHOD_NAMES: tuple[str, ...] = tuple(_SEND)


def send_method(name: str, channel_id: int, level: int = 1) -> SendMethod:
    """A new compressor for one channel. ``level`` is ignored by ``none``."""
    try:
        cls = _SEND[name]
    except KeyError:
        raise ValueError(f"unknown multifd-compression {name!r}") from None
    if cls is NoneSend:
        return cls(channel_id)
    return cls(channel_id, level)


def recv_method(name: str, channel_id: int) -> RecvMethod:
    """A new decompressor for one channel."""
    try:
        cls = _RECV[name]
    except KeyError:
        raise ValueError(f"unknown multifd-compression {name!r}") from None
    return cls(channel_id)


__all__ = [
    "METHOD_FLAGS",
    "METHOD_NAMES",
    "Buffer",
    "NoneRecv",
    "NoneSend",
    "Pages",
    "RecvMethod",
    "SendMethod",
    "ZlibRecv",
    "ZlibSend",
    "ZstdRecv",
    "ZstdSend",
    "page_count",
    "recv_method",
    "send_method",
]
