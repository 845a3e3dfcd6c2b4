"""MultiFDInit: the 64-byte greeting that opens every multifd channel (multifd layer).

Layout (big-endian): magic 0x11223344, version 1, 16-byte uuid, 1-byte channel id, 39 zero
bytes. The receiver checks it in QEMU 7.2's order -- magic, version, uuid, id, slot already
taken -- with QEMU's messages, except that ``id == channels`` is rejected too (QEMU 7.2 tests
``id > channels``, an off-by-one that writes past its channel array).
"""

from __future__ import annotations

import struct
import uuid as _uuid
from collections.abc import Container
from dataclasses import dataclass

from migemu.multifd.constants import INIT_SIZE, MULTIFD_MAGIC, MULTIFD_VERSION
from migemu.multifd.errors import ProtocolError

_INIT = struct.Struct(">II16sB7x32x")
assert _INIT.size == INIT_SIZE

ZERO_UUID = bytes(16)

# QEMU prefixes greeting errors (all but "already setup") with this, numbered with the count
# of multifd channels accepted so far, not with the id in the greeting (checked on 7.2).
INIT_ERROR_PREFIX = "failed to receive packet via multifd channel {}: "


@dataclass(frozen=True, slots=True)
class MultiFDInit:
    """A decoded greeting. ``magic`` and ``version`` are kept raw so checks can report them."""

    channel_id: int
    uuid: bytes = ZERO_UUID
    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION


def encode_init(channel_id: int, uuid: bytes = ZERO_UUID) -> bytes:
    """The 64 bytes a sender writes first on multifd channel ``channel_id`` (0..254)."""
    if not 0 <= channel_id <= 0xFF:
        raise ValueError(f"multifd channel id {channel_id} does not fit in a byte")
    if len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    return _INIT.pack(MULTIFD_MAGIC, MULTIFD_VERSION, uuid, channel_id)


def decode_init(data: bytes | bytearray | memoryview) -> MultiFDInit:
    """Split exactly 64 bytes into fields; no semantic checks (see ``check_init``)."""
    if len(data) != INIT_SIZE:
        raise ProtocolError(f"multifd: greeting is {len(data)} bytes, expected {INIT_SIZE}")
    magic, version, uuid, channel_id = _INIT.unpack(data)
    return MultiFDInit(channel_id=channel_id, uuid=uuid, magic=magic, version=version)


def _uuid_text(raw: bytes) -> str:
    return str(_uuid.UUID(bytes=raw))


def check_init(
    init: MultiFDInit,
    *,
    channels: int,
    local_uuid: bytes = ZERO_UUID,
    taken: Container[int] = (),
    accepted: int | None = None,
) -> int:
    """Apply the destination's greeting checks in QEMU's order; return the channel id.

    ``taken`` holds the ids already connected. Raises ``ProtocolError`` with QEMU's text;
    given ``accepted`` (multifd channels accepted so far), the text is the full line QEMU
    prints, with ``INIT_ERROR_PREFIX`` where QEMU puts it.
    """
    try:
        _check_greeting(init, channels, local_uuid)
    except ProtocolError as err:
        if accepted is None:
            raise
        raise ProtocolError(INIT_ERROR_PREFIX.format(accepted) + err.desc) from None
    if init.channel_id in taken:
        raise ProtocolError(f"multifd: received id '{init.channel_id}' already setup'")
    return init.channel_id


def _check_greeting(init: MultiFDInit, channels: int, local_uuid: bytes) -> None:
    if init.magic != MULTIFD_MAGIC:
        raise ProtocolError(
            f"multifd: received packet magic {init.magic:x} expected {MULTIFD_MAGIC:x}"
        )
    if init.version != MULTIFD_VERSION:
        raise ProtocolError(
            f"multifd: received packet version {init.version} expected {MULTIFD_VERSION}"
        )
    if init.uuid != local_uuid:
        raise ProtocolError(
            f"multifd: received uuid '{_uuid_text(init.uuid)}' and expected uuid "
            f"'{_uuid_text(local_uuid)}' for channel {_hhd(init.channel_id)}"
        )
    if init.channel_id >= channels:
        # QEMU 7.2's text for this check really prints the versions (a copy-paste slip);
        # we keep its words so logs match, but also reject id == channels, which QEMU 7.2
        # lets through and then crashes on (SIGSEGV, seen with 2 channels and id 2).
        raise ProtocolError(
            f"multifd: received channel version {init.version} expected {MULTIFD_VERSION}"
        )


def _hhd(value: int) -> int:
    """printf %hhd of a uint8: values above 127 print negative."""
    return value - 256 if value > 127 else value
