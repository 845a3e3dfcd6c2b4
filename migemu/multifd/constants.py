"""Sizes and magic numbers shared by the multifd wire formats (multifd layer).

The target page is 4 KiB (x86_64, TARGET_PAGE_BITS 12). A multifd packet holds at most
``PACKET_PAGES`` pages (QEMU's MULTIFD_PACKET_SIZE, 512 KiB, divided by the page size), so
its header plus offset array is always ``PACKET_HEADER_WIRE_SIZE`` bytes on the wire.
"""

from __future__ import annotations

PAGE_SIZE = 4096
PAGE_BITS = 12
PAGE_MASK = ~(PAGE_SIZE - 1) & 0xFFFF_FFFF_FFFF_FFFF

MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1

INIT_SIZE = 64

PACKET_BYTES = 512 * 1024
PACKET_PAGES = PACKET_BYTES // PAGE_SIZE
PACKET_FIXED_SIZE = 320
PACKET_HEADER_WIRE_SIZE = PACKET_FIXED_SIZE + 8 * PACKET_PAGES  # 1344
RAMBLOCK_NAME_SIZE = 256

# QEMU 7.2 reads a compressed payload into a 2 x 512 KiB buffer and never checks
# next_packet_size against it; we refuse anything larger instead of overflowing.
MAX_COMPRESSED_PAYLOAD = 2 * PACKET_BYTES

FLAG_SYNC = 0x1
FLAG_COMPRESSION_MASK = 0xE
FLAG_NOCOMP = 0x0
FLAG_ZLIB = 0x2
FLAG_ZSTD = 0x4
