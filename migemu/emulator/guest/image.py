"""Realistic guest memory content, seeded and deterministic (emulator layer).

Real guest RAM is runs of zero pages, code, text, sparse data structures and incompressible
data (compressed or encrypted buffers, page cache of media files). ``fill_image`` lays out
runs of 1..64 pages of those kinds in a configurable mix; ``PageSource`` writes the content
of one run (``write``) or of scattered pages (``write_pages``, used by the dirtying vCPU in
workload.py to overwrite pages with the same kinds).

Speed comes from never building a page byte by byte in Python: text and code pages are
windows into a few MiB of corpus built once per seed with numpy, random pages are raw PCG64
output, sparse pages are a handful of scattered byte stores. Determinism: all randomness is
the raw output of numpy's PCG64 (its bit stream is stable across numpy versions and
platforms) and words are stored little-endian, so the same seed, size and mix give the same
bytes on any machine.
"""

from __future__ import annotations

import functools
import mmap
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

PAGE_SIZE = 4096
_WORDS_PER_PAGE = PAGE_SIZE // 8

KINDS = ("zero", "code", "text", "sparse", "random")
MAX_RUN_PAGES = 64

TEXT_CORPUS_BYTES = 4 << 20
CODE_CORPUS_BYTES = 4 << 20

# Sub-stream ids: each use of randomness has its own PCG64 stream, so changing how one kind
# draws numbers never shifts the content of another.
_STREAM_TEXT = 1
_STREAM_CODE = 2
_STREAM_LAYOUT = 3
_STREAM_CONTENT = 4

U8Array = npt.NDArray[np.uint8]


class ImageMixError(ValueError):
    """A mix string or mapping could not be understood; the message says why."""


@dataclass(frozen=True)
class ImageMix:
    """Relative weights, by page count, of each kind of page."""

    # The default is tuned to look like the 1 GiB reference image real QEMU was measured on:
    # ~40% zero pages, non-zero data compressing to ~48% with zstd or zlib at level 1.
    zero: int = 40
    code: int = 17
    text: int = 26
    sparse: int = 9
    random: int = 8

    def __post_init__(self) -> None:
        for kind in KINDS:
            if getattr(self, kind) < 0:
                raise ImageMixError(f"weight of {kind!r} must not be negative")
        if self.total <= 0:
            raise ImageMixError("mix weights must add up to more than 0")

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in KINDS)

    def weights(self) -> tuple[int, ...]:
        return tuple(getattr(self, k) for k in KINDS)

    @classmethod
    def from_mapping(cls, weights: Mapping[str, int]) -> ImageMix:
        """Kinds not named get weight 0."""
        unknown = sorted(set(weights) - set(KINDS))
        if unknown:
            raise ImageMixError(f"unknown page kind {unknown[0]!r} (kinds: {', '.join(KINDS)})")
        return cls(**{k: int(weights.get(k, 0)) for k in KINDS})

    @classmethod
    def parse(cls, text: str) -> ImageMix:
        """``"zero=40,code=20,text=20,sparse=8,random=12"``; kinds not named get 0."""
        weights: dict[str, int] = {}
        for part in text.split(","):
            kind, sep, value = part.strip().partition("=")
            if not sep:
                raise ImageMixError(f"expected KIND=WEIGHT, got {part!r}")
            if kind in weights:
                raise ImageMixError(f"page kind {kind!r} given twice")
            try:
                weights[kind] = int(value)
            except ValueError:
                raise ImageMixError(f"weight of {kind!r} is not an integer: {value!r}") from None
        return cls.from_mapping(weights)

    def __str__(self) -> str:
        return ",".join(f"{k}={getattr(self, k)}" for k in KINDS)


DEFAULT_MIX = ImageMix()


@dataclass
class ImageStats:
    """What ``fill_image`` wrote: page counts per kind and the number of runs."""

    pages: int = 0
    runs: int = 0
    per_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    @property
    def nonzero_pages(self) -> int:
        """Pages with at least one non-zero byte (every non-``zero`` kind guarantees one)."""
        return self.pages - self.per_kind["zero"]


def _raw(gen: np.random.PCG64, n: int) -> npt.NDArray[np.uint64]:
    return np.asarray(gen.random_raw(n), dtype=np.uint64)


def _stream(seed: int, stream: int) -> np.random.PCG64:
    return np.random.PCG64([seed & 0xFFFFFFFFFFFFFFFF, stream])


def _concat(pieces: list[bytes], pick: npt.NDArray[np.int64]) -> U8Array:
    """``b"".join(pieces[i] for i in pick)`` without a Python step per element: the pieces
    are rows of a zero-padded table, and a mask keeps each row's real bytes."""
    width = max(len(p) for p in pieces)
    table = np.zeros((len(pieces), width), dtype=np.uint8)
    for i, p in enumerate(pieces):
        table[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    keep = np.arange(width) < np.array([len(p) for p in pieces])[:, None]
    return table[pick][keep[pick]]


# --- text -----------------------------------------------------------------------------------

_WORDS = (
    "a about after all also an and any are as at back be because been before being below "
    "between both but by call can come could day did do does down each even first for from "
    "get give go good had has have he her here him his how if in into is it its just know "
    "like look make many may more most much must my new no not now of on one only or other "
    "our out over people say see she should so some such take than that the their them then "
    "there these they thing think this those through time to two up use very was way we well "
    "were what when where which while who will with work would year you your "
    "kernel module driver device memory page frame buffer cache inode dentry socket packet "
    "queue thread process signal mutex lock irq timer clock tick jiffies schedule task "
    "migration dirty bitmap block region offset length header version flags status error "
    "warning notice debug info failed success ready pending active idle running stopped "
    "0 1 2 3 4 8 16 32 64 128 256 512 1024 4096 0x0 0x1 0xff 0x1000 0xffffffff -1 -22 "
    "int long char void struct unsigned static const return NULL true false sizeof "
    "/usr/lib /var/log /etc /proc/meminfo /dev/null /tmp Jan Feb Mar Nov Dec Mon Tue Fri "
    "GET POST HTTP/1.1 200 404 Content-Type: text/html; charset=utf-8 user root localhost"
).split()


def _build_text_corpus(seed: int, size: int) -> U8Array:
    # Each word comes plain (14/16), capitalised with a full stop (1/16) or with a comma.
    variants = []
    for w in _WORDS:
        variants += [w.encode(), (w[:1].upper() + w[1:] + ".").encode(), (w + ",").encode()]
    n_words = size // 5 + 1024  # mean word + space is ~6 bytes: enough to cover ``size``
    raw = _raw(_stream(seed, _STREAM_TEXT), n_words)
    word = (raw % np.uint64(len(_WORDS))).astype(np.int64)
    style = ((raw >> np.uint64(32)) % np.uint64(16)).astype(np.int64)
    pick = word * 3 + np.where(style < 2, style + 1, 0)
    text = _concat([v + b" " for v in variants], pick)[:size].copy()
    # Lines of at most ~72 columns: the first space in each 72-byte stretch becomes a newline.
    spaces = np.flatnonzero(text == 0x20)
    line = spaces // 72
    first = np.ones(len(spaces), dtype=np.bool_)
    first[1:] = line[1:] != line[:-1]
    text[spaces[first]] = 0x0A
    return text


# --- code -----------------------------------------------------------------------------------

# (opcode bytes, immediate kind, weight). Immediates: "d8" a small stack/struct displacement,
# "i32" a small constant, "r32" a near call/jump target, "" none.
_X86: tuple[tuple[bytes, str, int], ...] = (
    (bytes.fromhex("55 48 89 e5"), "", 3),  # push rbp; mov rbp, rsp
    (bytes.fromhex("48 83 ec"), "d8", 3),  # sub rsp, imm8
    (bytes.fromhex("48 8b 45"), "d8", 8),  # mov rax, [rbp+d8]
    (bytes.fromhex("48 89 45"), "d8", 8),  # mov [rbp+d8], rax
    (bytes.fromhex("8b 45"), "d8", 5),  # mov eax, [rbp+d8]
    (bytes.fromhex("89 7d"), "d8", 4),  # mov [rbp+d8], edi
    (bytes.fromhex("48 8b 7d"), "d8", 4),  # mov rdi, [rbp+d8]
    (bytes.fromhex("48 8d 45"), "d8", 3),  # lea rax, [rbp+d8]
    (bytes.fromhex("48 89 c7"), "", 4),  # mov rdi, rax
    (bytes.fromhex("48 89 df"), "", 2),  # mov rdi, rbx
    (bytes.fromhex("31 c0"), "", 3),  # xor eax, eax
    (bytes.fromhex("85 c0"), "", 4),  # test eax, eax
    (bytes.fromhex("48 85 c0"), "", 3),  # test rax, rax
    (bytes.fromhex("74"), "d8", 4),  # je rel8
    (bytes.fromhex("75"), "d8", 4),  # jne rel8
    (bytes.fromhex("eb"), "d8", 2),  # jmp rel8
    (bytes.fromhex("0f 84"), "r32", 2),  # je rel32
    (bytes.fromhex("e8"), "r32", 6),  # call rel32
    (bytes.fromhex("b8"), "i32", 3),  # mov eax, imm32
    (bytes.fromhex("be"), "i32", 2),  # mov esi, imm32
    (bytes.fromhex("48 8b 05"), "r32", 2),  # mov rax, [rip+rel32]
    (bytes.fromhex("48 83 c4"), "d8", 2),  # add rsp, imm8
    (bytes.fromhex("83 f8"), "d8", 2),  # cmp eax, imm8
    (bytes.fromhex("5b"), "", 2),  # pop rbx
    (bytes.fromhex("5d"), "", 2),  # pop rbp
    (bytes.fromhex("c9 c3"), "", 2),  # leave; ret
    (bytes.fromhex("c3 cc cc cc cc cc cc cc"), "", 1),  # ret, then int3 padding
    (bytes.fromhex("66 0f 1f 44 00 00"), "", 1),  # nopw 0(rax, rax, 1)
    (bytes.fromhex("0f 1f 40 00"), "", 1),  # nopl 0(rax)
    (bytes.fromhex("f3 0f 1e fa"), "", 2),  # endbr64
)
_IMM_LEN = {"": 0, "d8": 1, "i32": 4, "r32": 4}


def _build_code_corpus(seed: int, size: int) -> U8Array:
    ops = [op + bytes(_IMM_LEN[imm]) for op, imm, _ in _X86]
    weights = np.array([w for _, _, w in _X86], dtype=np.int64)
    cum = np.cumsum(weights)
    mean_len = sum(len(o) * w for o, w in zip(ops, weights.tolist(), strict=True)) / cum[-1]
    n_insn = int(size / mean_len) + 1024
    gen = _stream(seed, _STREAM_CODE)
    pick = np.searchsorted(cum, _raw(gen, n_insn) % np.uint64(cum[-1]), side="right")
    code = _concat(ops, pick)
    lengths = np.array([len(o) for o in ops], dtype=np.int64)[pick]
    starts = np.cumsum(lengths) - lengths
    # Fill the immediates: displacements are small multiples of 8 (negative, as stack slots
    # are), constants are small, call/jump targets are near (high bytes 0x00 or 0xff).
    for i, (op, imm, _) in enumerate(_X86):
        if not imm:
            continue
        where = starts[pick == i] + len(op)
        r = _raw(gen, len(where))
        if imm == "d8":
            val = (np.uint64(0x100) - (r % np.uint64(16) + np.uint64(1)) * np.uint64(8)) & 0xFF
        elif imm == "i32":
            val = r % np.uint64(0x400)
        else:
            val = (r % np.uint64(1 << 21)) - np.uint64(1 << 20)  # +-1 MiB, two's complement
        for b in range(_IMM_LEN[imm]):
            code[where + b] = ((val >> np.uint64(8 * b)) & np.uint64(0xFF)).astype(np.uint8)
    return code[:size]


# --- pages ----------------------------------------------------------------------------------


class PageSource:
    """Writes runs of pages of a given kind; content depends only on the seed and on the
    random numbers drawn from the ``gen`` the caller passes. Stateless after construction,
    so one instance may be shared by threads writing with their own generators."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.text, self.code = _corpora(seed)

    def write(self, dst: U8Array, first_page: int, n: int, kind: str, gen: np.random.PCG64) -> None:
        """Overwrite pages ``[first_page, first_page + n)`` of ``dst`` (a uint8 array over
        the whole block) with ``kind`` content."""
        lo = first_page * PAGE_SIZE
        hi = lo + n * PAGE_SIZE
        if kind == "zero":
            dst[lo:hi] = 0
        elif kind == "text" or kind == "code":
            corpus = self.text if kind == "text" else self.code
            off = int(_raw(gen, 1)[0] % np.uint64(len(corpus) - (hi - lo)))
            if kind == "code":
                off &= ~15  # functions start 16-byte aligned
            dst[lo:hi] = corpus[off : off + hi - lo]
        elif kind == "random":
            dst[lo:hi] = _raw(gen, n * _WORDS_PER_PAGE).astype("<u8").view(np.uint8)
        elif kind == "sparse":
            self._sparse(dst, first_page, n, gen)
        else:
            raise ValueError(f"unknown page kind {kind!r}")

    def write_pages(
        self,
        dst: U8Array,
        pages: npt.NDArray[np.int64],
        kind: str,
        material: npt.NDArray[np.uint64],
    ) -> None:
        """Overwrite scattered pages of ``dst`` (a ``(pages, PAGE_SIZE)`` uint8 array) with
        ``kind`` content, page ``pages[i]`` being derived only from ``material[i]`` (512
        random words). The result does not depend on how pages are grouped into calls."""
        k = len(pages)
        if kind == "zero":
            dst[pages] = 0
        elif kind == "random":
            dst[pages] = material.astype("<u8", copy=False).view(np.uint8).reshape(k, PAGE_SIZE)
        elif kind == "text" or kind == "code":
            corpus = self.text if kind == "text" else self.code
            offs = (material[:, 0] % np.uint64(len(corpus) - PAGE_SIZE)).astype(np.int64)
            if kind == "code":
                offs &= ~15
            windows = np.lib.stride_tricks.sliding_window_view(corpus, PAGE_SIZE)
            dst[pages] = windows[offs]
        elif kind == "sparse":
            rows = np.zeros((k, PAGE_SIZE), dtype=np.uint8)
            r = material[:, 0]
            last_only = (r % np.uint64(4)) == 0
            counts = np.where(last_only, 0, 1 + (r >> np.uint64(8)) % np.uint64(16))
            for j in range(16):
                active = np.flatnonzero(counts > j)
                if not len(active):
                    break
                w = material[active, 1 + j]
                pos = (w % np.uint64(PAGE_SIZE)).astype(np.int64)
                rows[active, pos] = (1 + (w >> np.uint64(16)) % np.uint64(255)).astype(np.uint8)
            rows[last_only, PAGE_SIZE - 1] = (
                1 + (r[last_only] >> np.uint64(24)) % np.uint64(255)
            ).astype(np.uint8)
            dst[pages] = rows
        else:
            raise ValueError(f"unknown page kind {kind!r}")

    @staticmethod
    def _sparse(dst: U8Array, first_page: int, n: int, gen: np.random.PCG64) -> None:
        dst[first_page * PAGE_SIZE : (first_page + n) * PAGE_SIZE] = 0
        r = _raw(gen, n)
        # A quarter of the pages carry only their last byte: a zero detector that stops
        # short of the end of the page gets them wrong.
        last_only = (r % np.uint64(4)) == 0
        counts = np.where(last_only, 0, 1 + (r >> np.uint64(8)) % np.uint64(16)).astype(np.int64)
        page_no = np.repeat(np.arange(first_page, first_page + n, dtype=np.int64), counts)
        s = _raw(gen, len(page_no))
        pos = page_no * PAGE_SIZE + (s % np.uint64(PAGE_SIZE)).astype(np.int64)
        dst[pos] = (1 + (s >> np.uint64(16)) % np.uint64(255)).astype(np.uint8)
        last = np.flatnonzero(last_only) + first_page
        dst[last * PAGE_SIZE + PAGE_SIZE - 1] = (1 + (r[last_only] >> np.uint64(24)) % 255).astype(
            np.uint8
        )


@functools.lru_cache(maxsize=4)
def _corpora(seed: int) -> tuple[U8Array, U8Array]:
    text = _build_text_corpus(seed, TEXT_CORPUS_BYTES)
    code = _build_code_corpus(seed, CODE_CORPUS_BYTES)
    text.flags.writeable = False
    code.flags.writeable = False
    return text, code


def as_pages_array(buf: memoryview | bytearray | mmap.mmap) -> U8Array:
    """A writable uint8 numpy view of a RAM block's memory (no copy)."""
    return np.frombuffer(buf, dtype=np.uint8)


def fill_image(
    buf: memoryview | bytearray | mmap.mmap,
    seed: int = 1,
    mix: ImageMix = DEFAULT_MIX,
    first_page: int = 0,
    n_pages: int | None = None,
) -> ImageStats:
    """Fill ``n_pages`` pages from ``first_page`` (default: the whole buffer) with an image.

    Every page in the range is written, zero pages included, so the result does not depend
    on what the memory held before. Same seed, size and mix give the same bytes.
    """
    dst = as_pages_array(buf)
    if n_pages is None:
        n_pages = len(dst) // PAGE_SIZE - first_page
    if first_page < 0 or n_pages < 0 or (first_page + n_pages) * PAGE_SIZE > len(dst):
        raise IndexError(f"pages [{first_page}, {first_page + n_pages}) outside the buffer")
    source = PageSource(seed)
    layout = _stream(seed, _STREAM_LAYOUT)
    content = _stream(seed, _STREAM_CONTENT)
    cum = np.cumsum(mix.weights())
    stats = ImageStats(pages=n_pages)
    page = 0
    while page < n_pages:
        # Draw the layout in batches; one Python step per run, never per page.
        r = _raw(layout, 1024)
        kinds = np.searchsorted(cum, r % np.uint64(mix.total), side="right").tolist()
        lengths = (1 + (r >> np.uint64(32)) % np.uint64(MAX_RUN_PAGES)).tolist()
        for k, n in zip(kinds, lengths, strict=True):
            if page >= n_pages:
                break
            n = min(n, n_pages - page)
            kind = KINDS[k]
            source.write(dst, first_page + page, n, kind, content)
            stats.per_kind[kind] += n
            stats.runs += 1
            page += n
    return stats


def write_image(path: str, size: int, seed: int = 1, mix: ImageMix = DEFAULT_MIX) -> ImageStats:
    """Write an image of ``size`` bytes (a multiple of the page size) to ``path``."""
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"image size {size} is not a positive multiple of {PAGE_SIZE}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED) as mem:
            stats = fill_image(mem, seed, mix)
            mem.flush()
    finally:
        os.close(fd)
    return stats


def main(argv: list[str] | None = None) -> int:
    import argparse
    import hashlib

    def mix_arg(text: str) -> ImageMix:
        try:
            return ImageMix.parse(text)
        except ImageMixError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    ap = argparse.ArgumentParser(description="Write a deterministic realistic guest RAM image.")
    ap.add_argument("out")
    ap.add_argument("size_mib", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default=str(DEFAULT_MIX), type=mix_arg)
    a = ap.parse_args(argv)
    stats = write_image(a.out, a.size_mib << 20, a.seed, a.mix)
    with open(a.out, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    kinds = ", ".join(f"{k}={stats.per_kind[k]}" for k in KINDS)
    print(f"{a.out}: {stats.pages} pages; {kinds}; sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
