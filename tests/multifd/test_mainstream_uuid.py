"""validate-uuid on the main stream: the ``configuration/uuid`` subsection, byte for byte.

QEMU 7.2 (``migration/savevm.c``, ``vmstate_uuid``) appends the subsection to the
CONFIGURATION when ``-uuid`` was given and the capability is on; the destination compares
it in the subsection's post_load, before the machine type is compared.
"""

from __future__ import annotations

import uuid

import pytest

from migemu.multifd import ProtocolError
from migemu.multifd.mainstream import MainStreamDecoder
from migemu.multifd.mainstream.encoder import encode_file_header
from migemu.multifd.mainstream.records import Configuration

U1 = uuid.UUID("11111111-1111-1111-1111-111111111111").bytes
U2 = uuid.UUID("22222222-2222-2222-2222-222222222222").bytes


def test_header_with_uuid_bytes() -> None:
    # QEVM v3, CONFIGURATION "none", then 05 str8 "configuration/uuid" be32 1, 16 bytes
    expected = (
        bytes.fromhex("5145564d 00000003 07 00000004") + b"none"
        + b"\x05" + bytes([18]) + b"configuration/uuid" + bytes.fromhex("00000001") + U1
    )  # fmt: skip
    assert encode_file_header("none", U1) == expected
    assert encode_file_header("none") == expected[:17]


def test_header_rejects_a_short_uuid() -> None:
    with pytest.raises(ValueError):
        encode_file_header("none", b"\x01" * 15)


def _config(decoder: MainStreamDecoder, data: bytes) -> Configuration:
    # the configuration is only complete once the next record's type byte is there
    records = decoder.feed(data + b"\x00")
    configs = [r for r in records if isinstance(r, Configuration)]
    assert len(configs) == 1
    return configs[0]


@pytest.mark.parametrize("local", [U1, None])
def test_same_uuid_or_local_unset_is_accepted(local: bytes | None) -> None:
    config = _config(MainStreamDecoder(uuid=local), encode_file_header("none", U1))
    assert config.subsections == (("configuration/uuid", 1, U1),)


def test_no_subsection_is_accepted_whatever_the_local_uuid() -> None:
    assert _config(MainStreamDecoder(uuid=U2), encode_file_header("none")).subsections == ()


def test_other_uuid_fails_with_qemus_text() -> None:
    with pytest.raises(ProtocolError) as err:
        MainStreamDecoder(uuid=U2).feed(encode_file_header("none", U1) + b"\x00")
    assert err.value.desc == (
        "UUID received is 11111111-1111-1111-1111-111111111111 "
        "and local is 22222222-2222-2222-2222-222222222222\n"
        "load of migration failed: Invalid argument"
    )


def test_uuid_is_checked_before_the_machine_type() -> None:
    with pytest.raises(ProtocolError, match="^UUID received is"):
        MainStreamDecoder(machine="pc", uuid=U2).feed(encode_file_header("none", U1) + b"\x00")
