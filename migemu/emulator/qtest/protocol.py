"""The qtest text protocol, server side, as a sans-IO core (emulator layer).

QEMU's ``-qtest`` chardev carries newline-terminated commands (``read 0x100000 0x1``) and
one-line answers (``OK 0x2a``, ``FAIL Unknown command 'foo'``). ``QtestProtocol.feed(bytes)``
takes whatever arrived and returns the bytes to send back; it owns the ``-qtest-log`` writer,
which reproduces QEMU 7.2's log (``[R +t] words``, ``[S +t] answer``, ``[I t] OPENED``).
Answers follow softmmu/qtest.c: a little-endian target without the qtest accelerator, so
``clock_step``/``clock_set`` are unknown commands, exactly as on a TCG/KVM QEMU. Where QEMU
aborts on a malformed argument, migemu answers ``FAIL <reason>`` and keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from typing import Protocol, TextIO

# Commands are split on single spaces, keeping empty words, like g_strsplit(cmd, " ", 0).
SEPARATOR = " "
# An unterminated command longer than this is discarded (QEMU would grow without bound).
MAX_LINE_BYTES = 64 << 20

_SIZES = {"b": 1, "w": 2, "l": 4, "q": 8}


class Memory(Protocol):
    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class QtestArgumentError(ValueError):
    """A command's argument is missing or not a number (QEMU asserts; migemu answers FAIL)."""


_C_UINT = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def parse_c_uint(word: str | None, what: str) -> int:
    """``strtoull(word, NULL, 0)`` that must consume the whole word (qemu_strtou64)."""
    if word is None or word == "":
        raise QtestArgumentError(f"missing {what}")
    if not _C_UINT.fullmatch(word):
        raise QtestArgumentError(f"invalid {what} '{word}'")
    if word[:2] in ("0x", "0X"):
        value = int(word[2:], 16)
    elif word.startswith("0"):
        value = int(word, 8)
    else:
        value = int(word)
    if value >= 1 << 64:
        raise QtestArgumentError(f"{what} '{word}' out of range")
    return value


def _nibble(ch: str) -> int:
    """hex2nib(): -1 for a non-hex character, as QEMU computes it."""
    try:
        return int(ch, 16)
    except ValueError:
        return -1


def decode_write_hex(text: str, length: int) -> bytes:
    """The data of ``write ADDR LEN 0xHEX``: missing digits give zeros, as QEMU does."""
    out = bytearray(length)
    for i in range(length):
        if i * 2 + 4 <= len(text):
            out[i] = ((_nibble(text[i * 2 + 2]) << 4) | _nibble(text[i * 2 + 3])) & 0xFF
    return bytes(out)


class QtestLog:
    """``-qtest-log``'s format. ``clock`` gives seconds; times are relative to OPENED."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._clock = clock
        self._t0: float | None = None

    def _elapsed(self) -> float:
        return 0.0 if self._t0 is None else self._clock() - self._t0

    def opened(self) -> None:
        self._t0 = self._clock()
        self._out.write(f"[I {0.0:.6f}] OPENED\n")

    def closed(self) -> None:
        self._out.write(f"[I +{self._elapsed():.6f}] CLOSED\n")
        self._t0 = None
        self._out.flush()

    def received(self, words: list[str]) -> None:
        self._out.write(f"[R +{self._elapsed():.6f}]" + "".join(" " + w for w in words) + "\n")

    def sent(self, text: str, *, prefix: bool = True) -> None:
        # QEMU's few unprefixed answers (ERR ...) appear in the log without a timestamp.
        self._out.write((f"[S +{self._elapsed():.6f}] " if prefix else "") + text)

    def flush(self) -> None:
        self._out.flush()


class QtestProtocol:
    """One qtest connection: bytes in, answer bytes out. Not thread-safe; one per socket."""

    def __init__(self, memory: Memory, log: QtestLog | None = None) -> None:
        self._memory = memory
        self._log = log
        self._buf = bytearray()
        self._out: list[str] = []
        self.commands = 0  # commands answered, for tests and statistics
        self._handlers: dict[str, Callable[[list[str]], None]] = {
            "endianness": self._endianness,
            "read": self._read,
            "write": self._write,
            "b64read": self._b64read,
            "b64write": self._b64write,
            "memset": self._memset,
        }
        for suffix in _SIZES:
            self._handlers["read" + suffix] = self._read_sized
            self._handlers["write" + suffix] = self._write_sized

    def opened(self) -> None:
        if self._log is not None:
            self._log.opened()

    def closed(self) -> None:
        if self._log is not None:
            self._log.closed()

    def feed(self, data: bytes) -> bytes:
        """Process every complete line of ``data`` (plus what came before); return answers."""
        self._buf += data
        while (end := self._buf.find(b"\n")) >= 0:
            line = self._buf[:end].decode("latin-1")
            del self._buf[: end + 1]
            self._command(line)
        if len(self._buf) > MAX_LINE_BYTES:
            self._buf.clear()
        if self._log is not None:
            self._log.flush()
        out, self._out = "".join(self._out), []
        return out.encode("latin-1")

    # -- answers -------------------------------------------------------------------------

    def _send(self, text: str, *, prefix: bool = True) -> None:
        self._out.append(text)
        if self._log is not None:
            self._log.sent(text, prefix=prefix)

    def _command(self, line: str) -> None:
        words = line.split(SEPARATOR)
        if self._log is not None:
            self._log.received(words if line else [])
        self.commands += 1
        handler = self._handlers.get(words[0])
        if handler is None:
            self._send(f"FAIL Unknown command '{words[0]}'\n")
            return
        try:
            handler(words)
        except QtestArgumentError as err:
            self._send(f"FAIL {words[0]}: {err}\n")

    # -- commands (names and answers as softmmu/qtest.c) ---------------------------------

    def _endianness(self, words: list[str]) -> None:
        self._send("OK little\n")

    def _read_sized(self, words: list[str]) -> None:
        addr = parse_c_uint(_arg(words, 1), "address")
        size = _SIZES[words[0][4]]
        value = int.from_bytes(self._memory.read(addr, size), "little")
        self._send(f"OK 0x{value:016x}\n")

    def _write_sized(self, words: list[str]) -> None:
        addr = parse_c_uint(_arg(words, 1), "address")
        value = parse_c_uint(_arg(words, 2), "value")
        size = _SIZES[words[0][5]]
        self._memory.write(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        self._send("OK\n")

    def _read(self, words: list[str]) -> None:
        addr = parse_c_uint(_arg(words, 1), "address")
        length = parse_c_uint(_arg(words, 2), "length")
        if length == 0:
            raise QtestArgumentError("length must not be 0")
        self._send(f"OK 0x{self._memory.read(addr, length).hex()}\n")

    def _b64read(self, words: list[str]) -> None:
        addr = parse_c_uint(_arg(words, 1), "address")
        length = parse_c_uint(_arg(words, 2), "length")
        data = self._memory.read(addr, length)
        self._send(f"OK {base64.b64encode(data).decode('ascii')}\n")

    def _write(self, words: list[str]) -> None:
        addr = parse_c_uint(_arg(words, 1), "address")
        length = parse_c_uint(_arg(words, 2), "length")
        text = _arg(words, 3)
        if text is None:
            raise QtestArgumentError("missing data")
        if len(text) < 3:
            self._send("ERR invalid argument size\n", prefix=False)
            return
        self._memory.write(addr, decode_write_hex(text, length))
        self._send("OK\n")

    def _memset(self, words: list[str]) -> None:
        addr = parse_c_uint(_arg(words, 1), "address")
        length = parse_c_uint(_arg(words, 2), "length")
        pattern = parse_c_uint(_arg(words, 3), "pattern")
        if length:
            self._memory.write(addr, bytes([pattern & 0xFF]) * length)
        self._send("OK\n")

    def _b64write(self, words: list[str]) -> None:
        addr = parse_c_uint(_arg(words, 1), "address")
        length = parse_c_uint(_arg(words, 2), "length")
        text = _arg(words, 3)
        if text is None:
            raise QtestArgumentError("missing data")
        if len(text) < 3:
            self._send("ERR invalid argument size\n", prefix=False)
            return
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4))
        except binascii.Error as err:
            raise QtestArgumentError(f"invalid base64 data: {err}") from err
        if len(data) != length and self._log is not None:
            self._log.sent(f"b64write: data length mismatch (told {length}, found {len(data)})\n")
        self._memory.write(addr, data[:length].ljust(length, b"\0"))
        self._send("OK\n")


def _arg(words: list[str], i: int) -> str | None:
    return words[i] if i < len(words) else None
