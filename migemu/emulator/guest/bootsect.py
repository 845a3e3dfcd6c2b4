"""Boot images migemu can run: recognising QEMU migration-test's x86 boot sector (emulator).

migemu does not execute guest code. It recognises one program by its behaviour-defining
instructions and runs an equivalent built-in workload instead: the migration-test boot
sector ("a-b-bootblock"), which prints ``A``, then forever increments byte 0 of every page in
[START, END), counting sweeps in ``%bl`` and printing ``B`` whenever ``(bl + 1) & 0x3f`` is 0.
The check is structural, not a hash: a 512-byte sector with the 0x55AA signature whose
32-bit code contains that exact loop (``mov $START,%eax; incb (%eax); add $4096,%eax;
cmp $END,%eax; jl; inc %bl; and $0x3f,%bl; jnz; out 'B' to 0x3f8; jmp``) with jumps that
close the loop, preceded by the ``A`` output and ``mov $0,%bl``. START and END are read from
the code, so the workload sweeps exactly the range the image would.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

SECTOR_BYTES = 512
BOOT_SIGNATURE = b"\x55\xaa"
PAGE_BYTES = 4096

# Port 0x3f8 (COM1) output of a character: mov $C,%ax; mov $0x3f8,%dx; outb %al,%dx
_OUT = rb"\x66\xb8%s\x00\x66\xba\xf8\x03\xee"
_SWEEP_LOOP = re.compile(
    (_OUT % b"A")
    + rb"\xb3\x00"  # mov $0,%bl
    + rb"(?P<main>\xb8(?P<start>.{4}))"  # mainloop: mov $START,%eax
    + rb"(?P<inner>\xfe\x00)"  # innerloop: incb (%eax)
    + rb"\x05(?P<step>.{4})"  # add $STEP,%eax
    + rb"\x3d(?P<end>.{4})"  # cmp $END,%eax
    + rb"\x7c(?P<jl>.)"  # jl innerloop
    + rb"\xfe\xc3"  # inc %bl
    + rb"\x80\xe3\x3f"  # andb $0x3f,%bl
    + rb"\x75(?P<jnz>.)"  # jnz mainloop
    + (_OUT % b"B")
    + rb"\xeb(?P<jmp>.)",  # jmp mainloop
    re.DOTALL,
)


@dataclass(frozen=True)
class SweepBootImage:
    """What a recognised migration-test boot sector does: sweep [start, end)."""

    start: int
    end: int

    def guest_spec(self) -> str:
        """The ``-migemu-guest`` spec of the equivalent built-in workload."""
        return f"sweep,start=0x{self.start:x},end=0x{self.end:x}"


def _target(m: re.Match[bytes], group: str) -> int:
    """Where a rel8 jump in group ``group`` lands (offset in the sector)."""
    rel = struct.unpack("b", m.group(group))[0]
    return m.end(group) + rel


def identify_boot_sector(data: bytes) -> SweepBootImage | None:
    """The sweep guest that ``data`` (a disk's first bytes) boots, or None if unknown."""
    sector = data[:SECTOR_BYTES]
    if len(sector) < SECTOR_BYTES or sector[510:512] != BOOT_SIGNATURE:
        return None
    m = _SWEEP_LOOP.search(sector)
    if m is None:
        return None
    (start,) = struct.unpack("<I", m.group("start"))
    (step,) = struct.unpack("<I", m.group("step"))
    (end,) = struct.unpack("<I", m.group("end"))
    loops_close = (
        _target(m, "jl") == m.start("inner")
        and _target(m, "jnz") == m.start("main")
        and _target(m, "jmp") == m.start("main")
    )
    if not loops_close or step != PAGE_BYTES or start % PAGE_BYTES or end % PAGE_BYTES:
        return None
    if not start < end:
        return None
    return SweepBootImage(start, end)
