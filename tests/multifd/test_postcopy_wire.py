"""Postcopy on the wire, byte by byte: the MIG_CMD_* payloads of 7.2 (savevm.c), the
return-path messages (migration.c, ram.c), the preempt channel's bare RAM records, and a
whole postcopy main stream through the main decoder."""

from __future__ import annotations

import struct

import pytest

from migemu.multifd import ProtocolError
from migemu.multifd.mainstream import (
    VMEOF,
    Command,
    MainStreamDecoder,
    MainStreamEncoder,
    RamEOS,
    RamPage,
    RamZero,
    SectionStart,
)
from migemu.multifd.mainstream import postcopy as wire
from migemu.multifd.mainstream.returnpath import (
    RECV_BITMAP_ENDING,
    RP_RECV_BITMAP,
    RP_REQ_PAGES,
    RP_REQ_PAGES_ID,
    RP_RESUME_ACK,
    ReturnPathDecoder,
    encode_rp_recv_bitmap,
    encode_rp_req_pages,
    encode_rp_resume_ack,
)

MIB = 1 << 20
BLOCKS = {"mem0": 4 * MIB}
PAGE = 4096


def test_command_bytes_as_qemu_sends_them():
    assert wire.encode_open_return_path() == bytes.fromhex("0800010000")
    assert wire.encode_ping(1) == bytes.fromhex("080002000400000001")
    assert wire.encode_postcopy_advise(4096, 4096) == bytes.fromhex(
        "080003001000000000000010000000000000001000"
    )
    assert wire.encode_postcopy_listen() == bytes.fromhex("0800040000")
    assert wire.encode_postcopy_run() == bytes.fromhex("0800050000")
    assert wire.encode_postcopy_resume() == bytes.fromhex("0800090000")
    assert wire.encode_recv_bitmap("mem0") == bytes.fromhex("08000a0005046d656d30")
    assert wire.encode_packaged(b"abc") == bytes.fromhex("080007000400000003") + b"abc"
    assert wire.encode_preempt_eos() == bytes.fromhex("0000000000000010")


def test_discard_commands_hold_at_most_twelve_ranges():
    ranges = [(i * 2 * PAGE, PAGE) for i in range(13)]
    data = wire.encode_ram_discard("mem0", ranges)
    head = bytes.fromhex("00046d656d3000")  # version 0, counted "mem0", NUL
    first_len = len(head) + 12 * 16
    assert data[:5] == struct.pack(">BHH", 8, 6, first_len)
    assert data[5 : 5 + len(head)] == head
    second = data[5 + first_len :]
    assert second[:5] == struct.pack(">BHH", 8, 6, len(head) + 16)
    assert second[5 + len(head) :] == struct.pack(">QQ", 24 * PAGE, PAGE)
    assert wire.encode_ram_discard("mem0", []) == b""
    decoded = wire.decode_ram_discard(data[5 : 5 + first_len])
    assert decoded == wire.RamDiscard("mem0", tuple(ranges[:12]))


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (bytes(19), "CMD_POSTCOPY_RAM_DISCARD invalid length (19)"),
        (b"\x01\x04mem0\x00" + bytes(16), "CMD_POSTCOPY_RAM_DISCARD invalid version (1)"),
        (b"\x00\x04mem0\x07" + bytes(16), "CMD_POSTCOPY_RAM_DISCARD missing nil (7)"),
        (b"\x00\x04mem0\x00" + bytes(17), "CMD_POSTCOPY_RAM_DISCARD invalid length (17)"),
    ],
)
def test_discard_errors_have_qemu_texts(payload, text):
    with pytest.raises(ProtocolError) as info:
        wire.decode_ram_discard(payload)
    assert info.value.desc == text


def test_advise_checks():
    advise = wire.decode_postcopy_advise(struct.pack(">QQ", 4096, 4096), postcopy_ram=True)
    wire.check_postcopy_advise(advise, 4096, 4096)
    with pytest.raises(ProtocolError, match="RAM postcopy is disabled but have 16 byte advise"):
        wire.decode_postcopy_advise(bytes(16), postcopy_ram=False)
    with pytest.raises(ProtocolError, match="RAM postcopy is enabled but have 0 byte advise"):
        wire.decode_postcopy_advise(b"", postcopy_ram=True)
    assert wire.decode_postcopy_advise(b"", postcopy_ram=False).page_size_summary is None
    with pytest.raises(ProtocolError, match=r"CMD_POSTCOPY_ADVISE invalid length \(8\)"):
        wire.decode_postcopy_advise(bytes(8), postcopy_ram=True)
    huge = wire.decode_postcopy_advise(struct.pack(">QQ", 0x201000, 4096), postcopy_ram=True)
    with pytest.raises(ProtocolError) as info:
        wire.check_postcopy_advise(huge, 4096, 4096)
    assert info.value.desc == "Postcopy needs matching RAM page sizes (s=201000 d=1000)"
    small = wire.decode_postcopy_advise(struct.pack(">QQ", 4096, 1024), postcopy_ram=True)
    with pytest.raises(ProtocolError) as info:
        wire.check_postcopy_advise(small, 4096, 4096)
    assert info.value.desc == "Postcopy needs matching target page sizes (s=1024 d=4096)"


def test_return_path_page_requests_and_resume_ack():
    first = encode_rp_req_pages(0x5000, PAGE, "mem0")
    again = encode_rp_req_pages(0x6000, PAGE, None)
    assert first == bytes.fromhex("0003001100000000000050000000100004") + b"mem0"
    assert again == struct.pack(">HHQI", RP_REQ_PAGES, 12, 0x6000, PAGE)
    ack = encode_rp_resume_ack()
    assert ack == bytes.fromhex("0006000400000001")
    stream = first + again + ack
    decoder = ReturnPathDecoder()
    got = []
    for i in range(len(stream)):  # one byte at a time: messages cross every boundary
        got += decoder.feed(stream[i : i + 1])
    assert [m.kind for m in got] == [RP_REQ_PAGES_ID, RP_REQ_PAGES, RP_RESUME_ACK]
    assert got[0].page_request() == (0x5000, PAGE, "mem0")
    assert got[1].page_request() == (0x6000, PAGE, None)
    assert got[2].value == 1


def test_return_path_recv_bitmap_carries_the_bitmap_after_the_message():
    bitmap = bytes([0xFF, 0x01, 0, 0, 0, 0, 0, 0])
    data = encode_rp_recv_bitmap("mem0", bitmap[:2])  # padded to 8 bytes
    assert data == (
        struct.pack(">HH", RP_RECV_BITMAP, 5)
        + b"\x04mem0"
        + struct.pack(">Q", 8)
        + bitmap
        + struct.pack(">Q", RECV_BITMAP_ENDING)
    )
    decoder = ReturnPathDecoder()
    assert decoder.feed(data[:-1]) == []
    (message,) = decoder.feed(data[-1:])
    assert message.block_name() == "mem0" and message.bitmap == bitmap
    bad = data[:-8] + struct.pack(">Q", 1)
    with pytest.raises(ProtocolError) as info:
        ReturnPathDecoder().feed(bad)
    assert info.value.desc == "ram_dirty_bitmap_reload: ramblock 'mem0' end mark incorrect: 0x1"


def test_preempt_channel_records_one_byte_at_a_time():
    enc = MainStreamEncoder()
    page = bytes(range(256)) * 16
    stream = (
        enc.ram_page("mem0", 0x3000, page)
        + enc.ram_zero("mem0", 0x4000)
        + enc.ram_page("mem0", 0x5000, page)
        + wire.encode_preempt_eos()
        + b"ignored after EOS"
    )
    decoder = wire.PostcopyChannelDecoder(BLOCKS)
    got: list[object] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == [
        RamPage("mem0", 0x3000, page),
        RamZero("mem0", 0x4000, 0),
        RamPage("mem0", 0x5000, page),
        RamEOS(),
    ]
    assert decoder.done


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (struct.pack(">Q", 0x28) + bytes(PAGE), "Ack, bad migration stream!"),
        (struct.pack(">Q", 0x08) + b"\x04pc.r" + bytes(PAGE), "Can't find block pc.r"),
        (struct.pack(">Q", 0x04), "Unknown combination of migration flags: 0x4 (postcopy mode)"),
        (
            struct.pack(">Q", 4 * MIB | 0x08) + b"\x04mem0" + bytes(PAGE),
            "Illegal RAM offset 400000",
        ),
    ],
)
def test_preempt_channel_errors(data, text):
    decoder = wire.PostcopyChannelDecoder(BLOCKS)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(data)
    assert info.value.desc == text
    with pytest.raises(ProtocolError):  # the first error is kept
        decoder.feed(b"")


def postcopy_stream() -> tuple[bytes, int]:
    """A 7.2 postcopy main stream as postcopy_start() orders it; returns it and the offset
    of the first postcopy PART (where a recovery test cuts it)."""
    enc = MainStreamEncoder()
    page = b"\x11" * PAGE
    out = enc.header()
    out += wire.encode_open_return_path() + wire.encode_ping(1)
    out += wire.encode_postcopy_advise(PAGE, PAGE)
    out += enc.ram_start(list(BLOCKS.items()))
    out += enc.ram_part() + enc.ram_page("mem0", 0, page) + enc.ram_close()
    out += wire.encode_ram_discard("mem0", [(PAGE, 2 * PAGE)])
    out += wire.encode_ping(2)
    package = wire.encode_postcopy_listen() + enc.timer() + enc.globalstate("running")
    package += wire.encode_ping(3) + wire.encode_postcopy_run()
    out += wire.encode_packaged(package) + wire.encode_ping(4)
    enc.reset_block()
    cut = len(out)
    out += enc.ram_part() + enc.ram_page("mem0", PAGE, page) + enc.ram_close()
    out += enc.ram_end() + enc.ram_zero("mem0", 2 * PAGE) + enc.ram_close() + enc.eof()
    return out, cut


def test_a_whole_postcopy_stream_decodes_in_qemu_order():
    stream, _ = postcopy_stream()
    decoder = MainStreamDecoder(ram_blocks=BLOCKS)
    records = []
    for i in range(0, len(stream), 7):
        records += decoder.feed(stream[i : i + 7])
    commands = [r.cmd for r in records if isinstance(r, Command)]
    assert commands == [1, 2, 3, 6, 2, 7, 4, 2, 5, 2]
    pages = [r for r in records if isinstance(r, (RamPage, RamZero))]
    assert [(type(r).__name__, r.offset) for r in pages] == [
        ("RamPage", 0),
        ("RamPage", PAGE),
        ("RamZero", 2 * PAGE),
    ]
    full = [r.idstr for r in records if isinstance(r, SectionStart) and r.full]
    assert full == ["timer", "globalstate"]  # inside the package
    assert isinstance(records[-1], VMEOF)  # no VM description in postcopy


def test_resume_at_top_drops_a_broken_record_and_goes_on():
    stream, cut = postcopy_stream()
    decoder = MainStreamDecoder(ram_blocks=BLOCKS)
    decoder.feed(stream[: cut + 20])  # the connection broke inside a page record
    decoder.resume_at_top()
    enc = MainStreamEncoder()
    resumed = wire.encode_recv_bitmap("mem0") + wire.encode_postcopy_resume()
    resumed += enc.ram_part() + enc.ram_page("mem0", PAGE, b"\x22" * PAGE) + enc.ram_close()
    resumed += enc.eof()
    records = decoder.feed(resumed)
    assert [r.cmd for r in records if isinstance(r, Command)] == [10, 9]
    assert wire.decode_recv_bitmap_cmd(records[0].data) == "mem0"
    assert RamPage("mem0", PAGE, b"\x22" * PAGE) in records
    assert isinstance(records[-1], VMEOF)
