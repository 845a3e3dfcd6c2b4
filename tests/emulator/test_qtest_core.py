"""The qtest protocol core and guest-physical memory map, bytes in and bytes out."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from migemu.emulator.guest.dirty import DirtyBitmap
from migemu.emulator.qtest import PhysicalMemory, QtestLog, QtestProtocol, parse_c_uint, ram_layout
from migemu.emulator.ram import map_anonymous


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def machine_memory(mib: int = 4, machine: str = "pc-i440fx-7.2"):
    block = map_anonymous("pc.ram", mib << 20)
    bitmap = DirtyBitmap(block.pages)
    return block, bitmap, PhysicalMemory.for_machine(machine, [block], {"pc.ram": bitmap})


def test_lines_may_arrive_in_pieces():
    _, _, mem = machine_memory()
    proto = QtestProtocol(mem)
    assert proto.feed(b"endian") == b""
    assert proto.feed(b"ness\nwriteb 0x10 0x7") == b"OK little\n"
    assert proto.feed(b"\nreadb 0x10\n") == b"OK\nOK 0x0000000000000007\n"


def test_writes_reach_ram_and_mark_pages_dirty():
    block, bitmap, mem = machine_memory()
    proto = QtestProtocol(mem)
    bitmap.sync_and_clear()  # start clean
    assert proto.feed(b"write 0x1ffe 0x4 0xaabbccdd\n") == b"OK\n"
    assert block.mem[0x1FFE:0x2002] == b"\xaa\xbb\xcc\xdd"
    assert bitmap.count() == 2 and bitmap.is_dirty(1) and bitmap.is_dirty(2)  # straddles


def test_unmapped_reads_are_zero_and_writes_dropped():
    _, _, mem = machine_memory(1)
    proto = QtestProtocol(mem)
    assert proto.feed(b"writel 0x100000 0x12345678\n") == b"OK\n"  # just past 1 MiB of RAM
    assert proto.feed(b"read 0xffffe 0x4\n") == b"OK 0x00000000\n"


def test_malformed_arguments_fail_without_crashing():
    _, _, mem = machine_memory()
    proto = QtestProtocol(mem)
    assert proto.feed(b"read\n").startswith(b"FAIL read: missing address")
    assert proto.feed(b"read 0x0 0x0\n").startswith(b"FAIL read:")
    assert proto.feed(b"readb zz\n") == b"FAIL readb: invalid address 'zz'\n"
    assert proto.feed(b"\n") == b"FAIL Unknown command ''\n"


def test_c_numbers():
    assert parse_c_uint("0x10", "x") == 16
    assert parse_c_uint("010", "x") == 8
    assert parse_c_uint("0", "x") == 0
    assert parse_c_uint("12", "x") == 12


def test_log_format():
    _, _, mem = machine_memory()
    out = io.StringIO()
    clock = FakeClock()
    proto = QtestProtocol(mem, QtestLog(out, clock))
    proto.opened()
    clock.t += 0.25
    proto.feed(b"endianness\nwrite 0x0 0x1 0x\n")
    clock.t += 1
    proto.closed()
    assert out.getvalue().splitlines() == [
        "[I 0.000000] OPENED",
        "[R +0.250000] endianness",
        "[S +0.250000] OK little",
        "[R +0.250000] write 0x0 0x1 0x",
        "ERR invalid argument size",
        "[I +1.250000] CLOSED",
    ]


def test_pc_layout_splits_at_the_pci_hole():
    assert ram_layout("pc-i440fx-7.2", [map_anonymous("pc.ram", 1 << 20)]) == [(0, 0, 1 << 20)]
    big = type("B", (), {"size": 4 << 30})()
    assert ram_layout("pc-i440fx-7.2", [big]) == [
        (0, 0, 0xC0000000),
        (1 << 32, 0xC0000000, 1 << 30),
    ]
    assert ram_layout("pc-q35-7.2", [big])[0] == (0, 0, 0x80000000)
    assert ram_layout("none", [big]) == [(0, 0, 4 << 30)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_input_gets_answers_not_exceptions(data):
    _, _, mem = machine_memory(1)
    proto = QtestProtocol(mem)
    answer = proto.feed(data)
    assert answer.count(b"\n") == data.count(b"\n")  # one answer line per command
