"""The migemu-only ``migemu/vcpu`` section: the guest vCPU's position in the stream (emulator).

QEMU's ``-machine none`` migrates no CPU; migemu's sweep guest has a position (address and
sweep count) that must resume on the destination where the source stopped, so it travels as
one FULL section after RAM. It is sent only when the guest has such state, so a migration to
real QEMU (whose guest is idle) never carries it; real QEMU would refuse it as an unknown
section, cleanly.
"""

from __future__ import annotations

import struct

from migemu.multifd.mainstream import Reader
from migemu.multifd.mainstream.encoder import encode_section_full
from migemu.multifd.mainstream.records import SectionSpec

IDSTR = "migemu/vcpu"
SECTION_ID = 5  # after QEMU -M none's timer (0), ram (2) and globalstate (4)
VERSION = 1
_LEN = struct.Struct(">I")


def encode(state: bytes) -> bytes:
    return encode_section_full(SECTION_ID, IDSTR, 0, VERSION, _LEN.pack(len(state)) + state)


def _parse(reader: Reader) -> bytes:
    return reader.take(reader.u32())


SPEC = SectionSpec(IDSTR, 0, VERSION, VERSION, "custom", _parse)
