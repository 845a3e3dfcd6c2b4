"""Boot sector recognition: migration-test's guest (assembled in bootsect.py) is recognised
by its behaviour-defining code, near misses are not, and real QEMU really runs it."""

from __future__ import annotations

import subprocess
import time

import pytest
from bootsect import sweep_boot_sector
from harness import DEADLINE_S, QEMU

from migemu.emulator.guest.bootsect import SweepBootImage, identify_boot_sector


def test_recognised_with_its_range():
    assert identify_boot_sector(sweep_boot_sector()) == SweepBootImage(1 << 20, 100 << 20)
    image = identify_boot_sector(sweep_boot_sector(start=2 << 20, end=8 << 20))
    assert image == SweepBootImage(2 << 20, 8 << 20)
    assert image.guest_spec() == "sweep,start=0x200000,end=0x800000"


def test_disk_larger_than_a_sector():
    assert identify_boot_sector(sweep_boot_sector() + bytes(4096)) is not None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:510] + b"\0\0",  # not bootable
        lambda b: b[:256],  # short
        lambda b: b.replace(b"\x80\xe3\x3f", b"\x80\xe3\x1f"),  # 'B' every 32 sweeps
        lambda b: b.replace(b"\x05\x00\x10\x00\x00", b"\x05\x00\x20\x00\x00"),  # 8 KiB step
        lambda b: b.replace(b"\x66\xb8\x42\x00", b"\x66\xb8\x43\x00"),  # prints 'C'
        lambda b: b.replace(b"\xfe\x00", b"\xfe\x08"),  # decb instead of incb
    ],
)
def test_near_misses_are_not_recognised(mutate):
    image = mutate(sweep_boot_sector())
    assert image != sweep_boot_sector()
    assert identify_boot_sector(image) is None


def test_a_jump_that_leaves_the_loop_is_not_recognised():
    image = bytearray(sweep_boot_sector())
    jl = image.index(b"\x7c", image.index(b"\x3d\x00\x00\x40\x06"))
    image[jl + 1] = (image[jl + 1] - 2) & 0xFF
    assert identify_boot_sector(bytes(image)) is None


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_real_qemu_runs_the_assembled_sector(tmp_path):
    """The sector is the guest it claims to be: QEMU (TCG) boots it and prints A then B."""
    disk = tmp_path / "bootsect"
    disk.write_bytes(sweep_boot_sector())
    serial = tmp_path / "serial"
    assert QEMU is not None
    proc = subprocess.Popen(
        [QEMU, "-display", "none", "-accel", "tcg", "-m", "150M", "-monitor", "none",
         "-serial", f"file:{serial}", "-drive", f"file={disk},format=raw"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        end = time.monotonic() + DEADLINE_S
        while not (serial.exists() and b"B" in serial.read_bytes()):
            assert time.monotonic() < end, "no B from QEMU"
            time.sleep(0.01)  # polling the file with a deadline
        assert serial.read_bytes().startswith(b"AB")
    finally:
        proc.terminate()
        proc.wait()
