"""The sweep guest's serial output: 'A' at boot, 'B' every 64 sweeps, none after restore."""

from __future__ import annotations

from migemu.emulator.guest.dirty import DirtyBitmap
from migemu.emulator.guest.workload import SWEEP_B_INTERVAL, SweepWorkload
from migemu.emulator.ram import PAGE_SIZE, map_anonymous

PAGES = 8


def sweep() -> SweepWorkload:
    block = map_anonymous("pc.ram", 64 * PAGE_SIZE)
    return SweepWorkload(block, DirtyBitmap(block.pages), start=0, end=PAGES * PAGE_SIZE)


def test_a_then_b_every_64_sweeps():
    w = sweep()
    out: list[bytes] = []
    w.attach_serial(out.append)
    w.step(PAGES * SWEEP_B_INTERVAL - 1)
    assert b"".join(out) == b"A"
    w.step(1)
    assert b"".join(out) == b"AB"
    w.step(PAGES * SWEEP_B_INTERVAL * 2)
    assert b"".join(out) == b"ABBB"
    w.stop()


def test_output_before_attach_is_kept():
    w = sweep()
    w.step(PAGES * SWEEP_B_INTERVAL)
    out: list[bytes] = []
    w.attach_serial(out.append)
    assert b"".join(out) == b"AB"
    w.stop()


def test_restored_guest_does_not_boot_again():
    src = sweep()
    src.step(PAGES * SWEEP_B_INTERVAL - 3)
    dst = sweep()
    dst.restore(src.state())
    out: list[bytes] = []
    dst.attach_serial(out.append)
    dst.step(3)  # finishes sweep 64
    assert b"".join(out) == b"B"
    src.stop()
    dst.stop()
