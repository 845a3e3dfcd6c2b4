"""A boot sector equivalent to QEMU migration-test's x86 guest, assembled here by hand.

Written from the program's description (enter protected mode, print 'A' on COM1, then
forever increment byte 0 of each page in [start, end), printing 'B' every 64 sweeps), not
copied from QEMU: each instruction is encoded below with its mnemonic. Real QEMU boots it
(see test_bootsect.py), and migemu recognises it as its sweep guest.
"""

from __future__ import annotations

import struct

LOAD_ADDRESS = 0x7C00
PM_ENTRY = 0x20  # offset of the 32-bit code


def out_com1(ch: bytes) -> bytes:
    # mov $ch,%ax; mov $0x3f8,%dx; outb %al,%dx
    return b"\x66\xb8" + ch + b"\x00" + b"\x66\xba\xf8\x03" + b"\xee"


def sweep_boot_sector(start: int = 1 << 20, end: int = 100 << 20, mask: int = 0x3F) -> bytes:
    code = bytearray()
    gdtdesc_at = 0x78
    # 16-bit real mode
    code += b"\xfa"  # cli
    code += b"\x0f\x01\x16" + struct.pack("<H", LOAD_ADDRESS + gdtdesc_at)  # lgdt gdtdesc
    code += b"\x66\xb8" + struct.pack("<I", 1)  # mov $1,%eax
    code += b"\x0f\x22\xc0"  # mov %eax,%cr0
    code += b"\x66\xea" + struct.pack("<IH", LOAD_ADDRESS + PM_ENTRY, 8)  # ljmpl $8,entry
    code = code.ljust(PM_ENTRY, b"\0")
    # 32-bit protected mode
    code += b"\xe4\x92\x0c\x02\xe6\x92"  # inb $0x92,%al; or $2,%al; outb %al,$0x92 (A20)
    code += b"\xb8" + struct.pack("<I", 16) + b"\x8e\xd8"  # mov $16,%eax; mov %eax,%ds
    code += out_com1(b"A")
    code += b"\xb3\x00"  # mov $0,%bl
    main = len(code)
    code += b"\xb8" + struct.pack("<I", start)  # mov $start,%eax
    inner = len(code)
    code += b"\xfe\x00"  # incb (%eax)
    code += b"\x05" + struct.pack("<I", 4096)  # add $4096,%eax
    code += b"\x3d" + struct.pack("<I", end)  # cmp $end,%eax
    code += b"\x7c" + struct.pack("b", inner - (len(code) + 2))  # jl inner
    code += b"\xfe\xc3"  # inc %bl
    code += b"\x80\xe3" + bytes([mask])  # andb $mask,%bl
    code += b"\x75" + struct.pack("b", main - (len(code) + 2))  # jnz main
    code += out_com1(b"B")
    code += b"\xeb" + struct.pack("b", main - (len(code) + 2))  # jmp main
    # GDT: null, flat 4 GiB code (0x9a), flat 4 GiB data (0x92); then its descriptor
    code = code.ljust((len(code) + 3) & ~3, b"\0")
    gdt = len(code)
    code += bytes(8)
    code += b"\xff\xff\x00\x00\x00\x9a\xcf\x00"
    code += b"\xff\xff\x00\x00\x00\x92\xcf\x00"
    code = code.ljust(gdtdesc_at, b"\0")
    code += struct.pack("<HI", 0x27, LOAD_ADDRESS + gdt)
    assert len(code) <= 510
    return bytes(code.ljust(510, b"\0")) + b"\x55\xaa"
