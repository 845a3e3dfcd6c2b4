"""Guest-physical memory as the qtest protocol sees it: RAM blocks mapped at their addresses.

QEMU answers qtest ``read``/``write`` through the first CPU's address space. migemu models
the part that a test of guest RAM touches: the machine's first RAM block mapped where QEMU
maps it (``pc.ram`` split at the PCI hole of i440fx/q35, ``ram`` of ``-machine none`` at 0).
Reads of unmapped addresses return zeros and writes to them are dropped, as QEMU does for
unassigned memory; ROMs, legacy VGA and MMIO are not modelled. Writes mark the pages dirty
so that a running migration sends them (emulator layer; no IO).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from migemu.emulator.guest.dirty import DirtyBitmap
from migemu.emulator.ram import PAGE_SIZE, RAMBlock

FOUR_GIB = 1 << 32
# Where RAM above the PCI hole stops being mapped low (QEMU 7.2, gigabyte-aligned machines).
I440FX_LOWMEM = 0xC0000000
Q35_LOWMEM = 0x80000000
# RAM sizes from which QEMU moves part of RAM above 4 GiB.
I440FX_SPLIT_FROM = 0xE0000000
Q35_SPLIT_FROM = 0xB0000000


@dataclass(frozen=True)
class RAMMapping:
    """``length`` bytes of ``block`` from ``offset`` appear at guest-physical ``base``."""

    base: int
    block: RAMBlock
    offset: int
    length: int
    bitmap: DirtyBitmap | None

    @property
    def end(self) -> int:
        return self.base + self.length


def ram_layout(machine_type: str, blocks: Sequence[RAMBlock]) -> list[tuple[int, int, int]]:
    """(guest address, offset in the first block, length) triples, as QEMU 7.2 maps RAM."""
    if not blocks:
        return []
    size = blocks[0].size
    if "q35" in machine_type:
        low = Q35_LOWMEM if size >= Q35_SPLIT_FROM else size
    elif machine_type.startswith("pc") or "i440fx" in machine_type:
        low = I440FX_LOWMEM if size >= I440FX_SPLIT_FROM else size
    else:
        low = size
    layout = [(0, 0, low)]
    if size > low:
        layout.append((FOUR_GIB, low, size - low))
    return layout


class PhysicalMemory:
    """Byte-granular reads and writes at guest-physical addresses."""

    def __init__(self, mappings: Sequence[RAMMapping]) -> None:
        self._maps = sorted(mappings, key=lambda m: m.base)

    @classmethod
    def for_machine(
        cls, machine_type: str, blocks: Sequence[RAMBlock], bitmaps: Mapping[str, DirtyBitmap]
    ) -> PhysicalMemory:
        maps = [
            RAMMapping(base, blocks[0], offset, length, bitmaps.get(blocks[0].name))
            for base, offset, length in ram_layout(machine_type, blocks)
        ]
        return cls(maps)

    def _pieces(self, addr: int, length: int) -> Iterator[tuple[int, RAMMapping | None, int]]:
        """Split [addr, addr+length) into (position in the request, mapping or None, size)."""
        pos = 0
        while pos < length:
            a = addr + pos
            hit = next((m for m in self._maps if m.base <= a < m.end), None)
            if hit is not None:
                n = min(length - pos, hit.end - a)
            else:
                nxt = min((m.base for m in self._maps if m.base > a), default=None)
                n = length - pos if nxt is None else min(length - pos, nxt - a)
            yield pos, hit, n
            pos += n

    def read(self, addr: int, length: int) -> bytes:
        out = bytearray(length)  # unmapped ranges read as zeros
        for pos, m, n in self._pieces(addr, length):
            if m is not None:
                off = m.offset + addr + pos - m.base
                out[pos : pos + n] = m.block.mem[off : off + n]
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        for pos, m, n in self._pieces(addr, len(data)):
            if m is None:
                continue  # unassigned memory: the write goes nowhere
            off = m.offset + addr + pos - m.base
            m.block.mem[off : off + n] = data[pos : pos + n]
            if m.bitmap is not None:  # after the write, as the guest's vCPU does
                first = off // PAGE_SIZE
                m.bitmap.mark(first, (off + n - 1) // PAGE_SIZE - first + 1)
