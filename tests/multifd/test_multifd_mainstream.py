"""The main stream decoder's rules and messages (reference notes §11) and the encoder."""

from __future__ import annotations

import struct

import pytest

from migemu.multifd import PeerBroken, ProtocolError
from migemu.multifd.mainstream import (
    QEMU_SECTIONS,
    VMDESC_MACHINE_NONE,
    VMEOF,
    Command,
    Configuration,
    GlobalState,
    MainStreamDecoder,
    MainStreamEncoder,
    RamEOS,
    RamMemSize,
    RamPage,
    RamZero,
    Reader,
    SectionData,
    SectionSpec,
    SectionStart,
    TimerState,
    VMDescription,
    encode_command,
    encode_file_header,
    encode_ram_mem_size,
    encode_section_footer,
    encode_section_full,
    encode_section_part,
    encode_section_start,
    encode_timer_body,
)

MIB = 1 << 20
BLOCKS = {"mem0": 4 * MIB}
PAGE = 4096


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def good_stream(runstate: str = "running") -> bytes:
    enc = MainStreamEncoder()
    return b"".join(
        [
            enc.header(),
            enc.ram_start([("mem0", 4 * MIB)]),
            enc.ram_part(),
            enc.ram_zero("mem0", 0),
            enc.ram_zero("mem0", PAGE),
            enc.ram_page("mem0", 2 * PAGE, b"\x07" * PAGE),
            enc.ram_close(),
            enc.ram_end(),
            enc.ram_zero("mem0", 3 * PAGE),
            enc.ram_close(),
            enc.timer(5, 6),
            enc.globalstate(runstate),
            enc.eof(),
            enc.vmdescription(),
        ]
    )


def decode(data: bytes, **kwargs: object) -> list:
    decoder = MainStreamDecoder(**kwargs)  # type: ignore[arg-type]
    return decoder.feed(data)


def error_of(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    return info.value.desc


def ram_body(*records: bytes) -> bytes:
    return encode_file_header() + encode_section_start(2, "ram", 0, 4) + b"".join(records)


def test_good_stream() -> None:
    records = decode(good_stream(), ram_blocks=BLOCKS)
    assert records[0] == Configuration("none")
    assert RamZero("mem0", 3 * PAGE) in records  # CONTINUE across sections
    assert RamPage("mem0", 2 * PAGE, b"\x07" * PAGE) in records
    assert [type(r) for r in records].count(RamEOS) == 3
    assert TimerState(5, 6) in records
    assert records[-2:] == [VMEOF(), VMDescription(VMDESC_MACHINE_NONE)]


def test_continue_used_after_first_naming() -> None:
    enc = MainStreamEncoder()
    assert enc.ram_zero("mem0", 0) == u64(2) + b"\x04mem0\x00"
    assert enc.ram_zero("mem0", PAGE) == u64(PAGE | 0x22) + b"\x00"
    assert enc.ram_page("other", 0, bytes(PAGE))[:14] == u64(8) + b"\x05other"
    assert (
        enc.ram_zero_pages("mem0", [0, PAGE])
        == u64(2) + b"\x04mem0\x00" + u64(PAGE | 0x22) + b"\x00"
    )
    assert enc.ram_zero_pages("mem0", []) == b""


def test_encoder_validation() -> None:
    enc = MainStreamEncoder()
    with pytest.raises(ValueError):
        enc.ram_zero("mem0", 1)
    with pytest.raises(ValueError):
        enc.ram_page("mem0", 0, b"short")
    with pytest.raises(ValueError):
        encode_ram_mem_size([("mem0", 100)])
    with pytest.raises(ValueError):
        enc.globalstate("x" * 100)


def test_adopts_the_block_list_without_local_blocks() -> None:
    decoder = MainStreamDecoder()
    records = decoder.feed(good_stream())
    assert RamMemSize(4 * MIB, (("mem0", 4 * MIB),)) in records
    assert decoder.ram_blocks == {"mem0": 4 * MIB}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"QEVX" + bytes(4), "Not a migration stream"),
        (b"QEVM" + struct.pack(">I", 2), "SaveVM v2 format is obsolete and don't work anymore"),
        (b"QEVM" + struct.pack(">I", 4), "Unsupported migration stream version"),
        (b"QEVM" + struct.pack(">I", 3) + b"\x01", "Configuration section missing"),
        (encode_file_header("pc") + b"\x00", "Machine type received is 'pc' and local is 'none'"),
    ],
)
def test_header_errors(data: bytes, message: str) -> None:
    assert error_of(data) == message


def _subsection(name: str, version: int, body: bytes) -> bytes:
    return b"\x05" + bytes([len(name)]) + name.encode() + struct.pack(">I", version) + body


def test_configuration_subsections() -> None:
    caps = struct.pack(">I", 1) + b"\x0fx-ignore-shared"
    data = (
        encode_file_header()
        + _subsection("configuration/target-page-bits", 1, struct.pack(">I", 12))
        + _subsection("configuration/capabilities", 1, caps)
        + _subsection("configuration/uuid", 1, bytes(range(16)))
        + b"\x00"
    )
    config = decode(data)[0]
    assert [name for name, _, _ in config.subsections] == [
        "configuration/target-page-bits",
        "configuration/capabilities",
        "configuration/uuid",
    ]
    assert config.subsections[1][2] == caps
    bits = encode_file_header() + _subsection(
        "configuration/target-page-bits", 1, struct.pack(">I", 16)
    )
    assert error_of(bits + b"\x00") == "Received TARGET_PAGE_BITS is 16 but local is 12"
    unknown = encode_file_header() + _subsection("configuration/nope", 1, b"")
    assert error_of(unknown) == "load of migration failed: No such file or directory"


def test_top_level_errors() -> None:
    assert error_of(encode_file_header() + b"\x09") == "Unknown savevm section type 9"
    assert error_of(encode_file_header() + b"\x05\x00") == "Unknown savevm section type 5"
    assert error_of(encode_file_header() + encode_section_start(9, "pc.foo", 0, 1)) == (
        "Unknown savevm section or instance 'pc.foo' 0. Make sure that your current VM setup "
        "matches your saved VM setup, including any hotplugged devices"
    )
    assert error_of(encode_file_header() + encode_section_start(2, "ram", 1, 4)).startswith(
        "Unknown savevm section or instance 'ram' 1."
    )
    assert error_of(encode_file_header() + encode_section_part(7)) == "Unknown savevm section 7"


def test_version_errors() -> None:
    assert error_of(encode_file_header() + encode_section_start(2, "ram", 0, 5)) == (
        "savevm: unsupported version 5 for 'ram' v4"
    )
    assert error_of(encode_file_header() + encode_section_start(2, "ram", 0, 3)) == (
        "error while loading state for instance 0x0 of device 'ram'"
    )
    assert error_of(encode_file_header() + encode_section_start(0, "timer", 0, 0, full=True)) == (
        "timer: incoming version_id 0 is too old for local minimum version_id  1"
    )


def test_ram_section_id_zero_trap() -> None:
    """PART/END resolve ids by load id, and every load id starts at 0: a ram PART with id
    0 is dispatched to timer (QEMU 7.2 fails exactly like this, reference §4.4)."""
    enc = MainStreamEncoder()
    data = (
        encode_file_header()
        + encode_section_start(0, "ram", 0, 4)
        + encode_ram_mem_size([("mem0", 4 * MIB)])
        + u64(0x10)
        + encode_section_footer(0)
        + encode_section_part(0)
    )
    del enc
    assert error_of(data, ram_blocks=BLOCKS) == (
        "timer: incoming version_id 0 is too old for local minimum version_id  1"
    )


def test_footer_errors() -> None:
    body = ram_body(encode_ram_mem_size([("mem0", 4 * MIB)]), u64(0x10))
    assert error_of(body + b"\x7f" + bytes(4), ram_blocks=BLOCKS) == (
        "Missing section footer for ram"
    )
    assert error_of(body + encode_section_footer(3), ram_blocks=BLOCKS) == (
        "Mismatched section id in footer for ram - read 0x3 expected 0x2"
    )


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ((u64(0x200),), "Unknown combination of migration flags: 0x200"),
        ((u64(0x001),), "Unknown combination of migration flags: 0x1"),
        ((u64(0x00A),), "Unknown combination of migration flags: 0xa"),
        ((u64(0x22) + b"\x00",), "Ack, bad migration stream!"),
        ((u64(0x02) + b"\x06pc.ram\x00",), "Can't find block pc.ram"),
        ((u64(4 * MIB | 0x02) + b"\x04mem0\x00",), "Illegal RAM offset 400000"),
        ((u64(0x100) + b"\x04mem0",), "RAM_SAVE_FLAG_COMPRESS_PAGE is not supported by migemu"),
    ],
)
def test_ram_record_errors(records: tuple[bytes, ...], message: str) -> None:
    assert error_of(ram_body(*records), ram_blocks=BLOCKS) == message


def test_mem_size_errors() -> None:
    assert error_of(ram_body(encode_ram_mem_size([("pc.ram", 4 * MIB)])), ram_blocks=BLOCKS) == (
        'Unknown ramblock "pc.ram", cannot accept migration'
    )
    assert error_of(
        ram_body(encode_ram_mem_size([("mem0", 16 * MIB)])), ram_blocks={"mem0": 8 * MIB}
    ) == ("Size mismatch: mem0: 0x1000000 != 0x800000: Invalid argument")
    overrun = u64(PAGE | 4) + b"\x04mem0" + u64(2 * PAGE)
    assert "overruns" in error_of(ram_body(overrun))


def test_zero_fill_byte_is_kept() -> None:
    data = ram_body(encode_ram_mem_size([("mem0", 4 * MIB)]), u64(0x02) + b"\x04mem0\x5a")
    assert decode(data, ram_blocks=BLOCKS)[-1] == RamZero("mem0", 0, 0x5A)


def test_globalstate() -> None:
    assert GlobalState("paused") in decode(good_stream("paused"), ram_blocks=BLOCKS)
    bogus = encode_file_header() + encode_section_full(
        4, "globalstate", 0, 1, struct.pack(">I", 6) + b"bogus".ljust(100, b"\0")
    )
    assert error_of(bogus) == "invalid parameter value: bogus"


def test_timer_with_icount_subsections() -> None:
    body = (
        encode_timer_body(1, 2)
        + _subsection("timer/icount", 1, bytes(16))
        + _subsection("timer/icount/shift", 2, bytes(10))
        + _subsection("timer/icount/timers", 1, bytes(16))
    )
    data = encode_file_header() + encode_section_full(0, "timer", 0, 2, body) + b"\x00"
    timer = decode(data)[2]
    assert isinstance(timer, TimerState)
    assert [name for name, _, _ in timer.subsections] == [
        "timer/icount",
        "timer/icount/shift",
        "timer/icount/timers",
    ]
    bad = encode_timer_body() + _subsection("timer/other", 1, b"")
    assert error_of(encode_file_header() + encode_section_full(0, "timer", 0, 2, bad)) == (
        "error while loading state for instance 0x0 of device 'timer'"
    )


def test_timer_version_1_has_no_clock_offset() -> None:
    body = struct.pack(">q8x", 9)
    data = encode_file_header() + encode_section_full(0, "timer", 0, 1, body) + b"\x00"
    assert decode(data)[2] == TimerState(9, 0)


def test_commands() -> None:
    data = encode_file_header() + encode_command(1) + encode_command(2, struct.pack(">I", 1))
    assert decode(data + b"\x00")[1:3] == [Command(1, b""), Command(2, b"\x00\x00\x00\x01")]
    assert error_of(encode_file_header() + encode_command(2, b"abc")) == (
        "PING received bad length 3/4"
    )
    assert error_of(encode_file_header() + encode_command(99)) == "MIG_CMD 0x63 unknown (len 0x0)"


def test_after_eof_variants() -> None:
    base = encode_file_header() + b"\x00"
    decoder = MainStreamDecoder()
    assert decoder.feed(base)[-1] == VMEOF()
    assert not decoder.done
    assert decoder.feed_eof() == [VMDescription(None, 0)]
    assert decoder.done
    other = MainStreamDecoder()
    assert other.feed(base + b"\x07trailing")[-1] == VMDescription(None, 7)
    assert other.feed(b"ignored") == []


def test_eof_inside_the_stream_is_peer_broken() -> None:
    decoder = MainStreamDecoder(ram_blocks=BLOCKS)
    decoder.feed(good_stream()[:100])
    with pytest.raises(PeerBroken) as info:
        decoder.feed_eof()
    assert info.value.desc == "load of migration failed: Input/output error"


def test_errors_are_sticky() -> None:
    decoder = MainStreamDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"XXXXXXXX")
    with pytest.raises(ProtocolError, match="Not a migration stream"):
        decoder.feed(good_stream())


def test_byte_by_byte_equals_whole() -> None:
    data = good_stream()
    decoder = MainStreamDecoder(ram_blocks=BLOCKS)
    records = []
    for index in range(len(data)):
        records += decoder.feed(data[index : index + 1])
    assert records == decode(data, ram_blocks=BLOCKS)
    assert decoder.position == len(data)


def _parse_vcpu(reader: Reader) -> object:
    count = reader.u32()
    return [reader.u64() for _ in range(count)]


VCPU = SectionSpec("migemu-vcpu", 0, 1, 1, "custom", _parse_vcpu)


def test_extension_section() -> None:
    """Room for a migemu-only section: a custom spec decodes it; QEMU's set refuses it
    cleanly with QEMU's own message, as a real 7.2 destination would."""
    body = struct.pack(">IQQ", 2, 10, 20)
    data = encode_file_header() + encode_section_full(5, "migemu-vcpu", 0, 1, body) + b"\x00"
    records = MainStreamDecoder(sections=(*QEMU_SECTIONS, VCPU)).feed(data)
    assert records[1] == SectionStart(5, "migemu-vcpu", 0, 1, full=True)
    assert records[2] == SectionData("migemu-vcpu", [10, 20])
    assert error_of(data).startswith("Unknown savevm section or instance 'migemu-vcpu' 0.")
    # Split anywhere, the custom body still decodes (NeedMore propagates through Reader).
    decoder = MainStreamDecoder(sections=(*QEMU_SECTIONS, VCPU))
    split = []
    for index in range(len(data)):
        split += decoder.feed(data[index : index + 1])
    assert split == records


def test_return_path_messages() -> None:
    from migemu.multifd.mainstream import (
        RP_PONG,
        RP_SHUT,
        ReturnPathDecoder,
        ReturnPathMessage,
        encode_rp_pong,
        encode_rp_shut,
    )

    # The 16 bytes of the return-path capture (reference notes §10).
    wire = encode_rp_pong(1) + encode_rp_shut(0)
    assert wire == bytes.fromhex("00020004000000010001000400000000")
    decoder = ReturnPathDecoder()
    got = []
    for index in range(len(wire)):
        got += decoder.feed(wire[index : index + 1])
    assert got == [ReturnPathMessage(RP_PONG, b"\0\0\0\1"), ReturnPathMessage(RP_SHUT, bytes(4))]
    assert got[0].value == 1
    with pytest.raises(ProtocolError) as info:
        ReturnPathDecoder().feed(bytes.fromhex("00020003"))
    assert info.value.desc == "RP: Received invalid message 0x0002 length 0x0003"
    with pytest.raises(ProtocolError):
        ReturnPathDecoder().feed(bytes.fromhex("00090000"))


def test_pause_at_eos() -> None:
    data = good_stream()
    decoder = MainStreamDecoder(ram_blocks=BLOCKS, pause_at_eos=True)
    batches = [decoder.feed(data)]
    while decoder.paused:
        assert isinstance(batches[-1][-1], RamEOS)
        assert decoder.feed(b"") == []
        decoder.release()
        batches.append(decoder.feed(b""))
    assert len(batches) == 4  # three EOS, then the rest
    assert [r for batch in batches for r in batch] == decode(data, ram_blocks=BLOCKS)
    assert decoder.done


def test_eof_while_paused_defers_the_verdict() -> None:
    data = good_stream()
    decoder = MainStreamDecoder(ram_blocks=BLOCKS, pause_at_eos=True)
    records = decoder.feed(data) + decoder.feed_eof()
    while decoder.paused:
        decoder.release()
        records += decoder.feed(b"")
    assert records == decode(data, ram_blocks=BLOCKS)
    truncated = MainStreamDecoder(ram_blocks=BLOCKS, pause_at_eos=True)
    truncated.feed(data[:-600])
    truncated.feed_eof()
    with pytest.raises(PeerBroken):
        while True:
            truncated.release()
            truncated.feed(b"")


def test_missing_vmdescription_at_eof_after_pause() -> None:
    enc = MainStreamEncoder()
    data = enc.header() + enc.ram_start([("mem0", 4 * MIB)]) + enc.eof()
    decoder = MainStreamDecoder(ram_blocks=BLOCKS, pause_at_eos=True)
    decoder.feed(data)
    assert decoder.feed_eof() == []
    decoder.release()
    assert decoder.feed(b"")[-2:] == [VMEOF(), VMDescription(None, 0)]
    with pytest.raises(RuntimeError):
        decoder.feed(b"x")
