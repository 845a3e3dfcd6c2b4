"""The sending end of one multifd channel, as a sans-IO encoder (multifd layer).

``ChannelEncoder`` owns the channel's compression stream: ``greeting()`` gives the 64-byte
MultiFDInit to write first, ``packet(...)`` gives the header and payload of each packet.
Packet numbers come from the caller (QEMU numbers packets across all channels; see
``sync.PacketNumbers``). Like QEMU 7.2, pages of one packet belong to one RAMBlock, at most
128 of them, and a SYNC may ride on a packet with pages.
"""

from __future__ import annotations

from collections.abc import Sequence

from migemu.multifd.init import ZERO_UUID, encode_init
from migemu.multifd.methods import Pages, SendMethod, page_count, send_method
from migemu.multifd.packet import encode_header, make_header


class ChannelEncoder:
    """Encodes everything sent on multifd channel ``channel_id``."""

    def __init__(
        self, channel_id: int, method: str = "none", level: int = 1, uuid: bytes = ZERO_UUID
    ) -> None:
        self.channel_id = channel_id
        self.uuid = uuid
        self.method: SendMethod = send_method(method, channel_id, level)

    def greeting(self) -> bytes:
        return encode_init(self.channel_id, self.uuid)

    def packet(
        self,
        packet_num: int,
        ramblock: str = "",
        offsets: Sequence[int] = (),
        pages: Pages = b"",
        *,
        sync: bool = False,
    ) -> tuple[bytes, bytes]:
        """``(header, payload)`` for one packet; write them back to back. ``pages`` holds
        the data of ``offsets`` in the same order (a list of 4 KiB buffers or one buffer)."""
        count = page_count(pages)
        if count != len(offsets):
            raise ValueError(f"{len(offsets)} offsets but {count} pages")
        payload = self.method.compress(pages) if count else b""
        header = make_header(
            packet_num=packet_num,
            ramblock=ramblock if count else "",
            offsets=offsets,
            payload_size=len(payload),
            method_flag=self.method.flag,
            sync=sync,
        )
        return encode_header(header), payload
