"""Guest RAM: the emulated machine's RAM blocks, memory-mapped (emulator layer).

A block is an ``mmap`` either of a memory-backend-file (``share=on``: MAP_SHARED, so writes
reach the file, as with QEMU; ``share=off``: MAP_PRIVATE, copy-on-write over the file) or
anonymous memory with MAP_NORESERVE, so a 64 GiB guest costs nothing until pages are
touched. Blocks are addressed by their RAMBlock id (``mem0``, ``pc.ram``), as on the wire.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

PAGE_SIZE = 4096


class RAMError(Exception):
    """Guest RAM could not be set up; the message is what QEMU would print."""


@dataclass
class RAMBlock:
    """One RAMBlock: ``name`` is its id string as it appears in the migration stream."""

    name: str
    size: int
    mem: mmap.mmap
    path: str | None = None
    shared: bool = False
    # A MAP_SHARED file mapping keeps its fd: the file's holes (SEEK_HOLE) are pages known
    # to be zero without reading them (reading a tmpfs hole through the mapping allocates it).
    fd: int | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE

    def view(self) -> memoryview:
        return memoryview(self.mem)

    def data_extents(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Byte ranges within ``[start, end)`` that may hold non-zero bytes: all of it,
        unless the block is a shared file mapping whose file has holes there. Ranges are
        widened to whole pages."""
        if self.fd is None:
            yield start, end
            return
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                    return
                yield pos, end  # SEEK_DATA unsupported: assume data
                return
            if data >= end:
                return
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            lo = data - data % PAGE_SIZE
            hi = min(end, hole + (-hole) % PAGE_SIZE)
            yield max(lo, start), hi
            pos = hi

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.mem.close()
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


# Linux's MAP_NORESERVE (Python's mmap module exports it only from 3.13 on).
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def map_anonymous(name: str, size: int) -> RAMBlock:
    """Sparse anonymous RAM: untouched pages are never allocated. MAP_NORESERVE keeps the
    kernel's overcommit heuristic from refusing a guest larger than the host (QEMU 7.2
    itself fails there: migemu's 64 GiB guest on a 24 GiB host is a deliberate extension)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
    try:
        mem = mmap.mmap(-1, size, flags=flags)
    except OSError as err:
        raise RAMError(f"cannot set up guest memory '{name}': {err.strerror}") from err
    return RAMBlock(name, size, mem)


def map_file(name: str, path: str, size: int, share: bool) -> RAMBlock:
    """Map ``path`` as a RAM block of ``size`` bytes, creating or growing it as QEMU does."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise RAMError(f"can't open backing store {path} for guest RAM: {err.strerror}") from err
    try:
        file_size = os.fstat(fd).st_size
        if 0 < file_size < size:
            raise RAMError(
                f"backing store size 0x{file_size:x} does not match 'size' option 0x{size:x}"
            )
        if file_size == 0:
            os.ftruncate(fd, size)
        flags = mmap.MAP_SHARED if share else mmap.MAP_PRIVATE
        mem = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    if not share:  # private writes never reach the file: its holes say nothing then
        os.close(fd)
        return RAMBlock(name, size, mem, path=path, shared=share)
    os.set_inheritable(fd, False)
    return RAMBlock(name, size, mem, path=path, shared=share, fd=fd)


class GuestRAM:
    """The machine's RAM blocks, in registration order (the order QEMU migrates them)."""

    def __init__(self, blocks: list[RAMBlock] | None = None) -> None:
        self.blocks: list[RAMBlock] = list(blocks or [])

    @property
    def total(self) -> int:
        return sum(b.size for b in self.blocks)

    def block(self, name: str) -> RAMBlock | None:
        for b in self.blocks:
            if b.name == name:
                return b
        return None

    def close(self) -> None:
        for b in self.blocks:
            b.close()
