"""QEMU 7.2's JSON lexer: bytes in, tokens out, fed as bytes arrive (qapi layer, sans-IO).

This is the first stage of the monitor's input path (lexer -> streamer -> parser). It splits
the byte stream into tokens exactly where QEMU does, including its extensions and quirks:
single-quoted strings, any escape character accepted here (the parser judges it), ``0`` that
takes no exponent, one ``ERROR`` token per piece of junk followed by a recovery mode that skips
input up to a structural character or a control byte, and the cut of a pending token that grows
beyond ``MAX_TOKEN_SIZE``. Every rule here was checked against the real binary.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Final

MAX_TOKEN_SIZE: Final = 64 << 20
"""Bytes a token may hold (lexer), and all tokens of one message together (streamer)."""


class TokenKind(IntEnum):
    LCURLY = 1
    RCURLY = 2
    LSQUARE = 3
    RSQUARE = 4
    COMMA = 5
    COLON = 6
    INTEGER = 7
    FLOAT = 8
    KEYWORD = 9
    STRING = 10
    ERROR = 11
    """Junk: the text is what was consumed, the offending byte included."""
    OVERSIZE = 12
    """A pending token cut at ``MAX_TOKEN_SIZE + 1`` bytes; the text is left empty."""


Token = tuple[TokenKind, bytes]

_STRUCTURAL: Final[dict[int, Token]] = {
    ord("{"): (TokenKind.LCURLY, b"{"),
    ord("}"): (TokenKind.RCURLY, b"}"),
    ord("["): (TokenKind.LSQUARE, b"["),
    ord("]"): (TokenKind.RSQUARE, b"]"),
    ord(","): (TokenKind.COMMA, b","),
    ord(":"): (TokenKind.COLON, b":"),
}

# The fast path: whole tokens whose end is certain. A number or keyword only counts when the
# byte after it is already here and cannot continue it; everything else (a token cut by the
# end of the buffer, junk, odd numbers) goes to the slow path, which is exact.
_FAST: Final = re.compile(
    rb"""
    ([ \t\r\n]+)
    | ([{}\[\],:])
    | ("[^"\\\x00-\x1f\xfe\xff]*(?:\\[\x20-\xfd][^"\\\x00-\x1f\xfe\xff]*)*"
       |'[^'\\\x00-\x1f\xfe\xff]*(?:\\[\x20-\xfd][^'\\\x00-\x1f\xfe\xff]*)*')
    | (-?(?:0|[1-9][0-9]*)(?=[^0-9.eE]))
    | (-?(?:0|[1-9][0-9]*)\.[0-9]+(?:[eE][+-]?[0-9]+)?(?=[^0-9.eE])
       |-?[1-9][0-9]*[eE][+-]?[0-9]+(?=[^0-9.eE]))
    | ([a-z]+(?=[^a-z]))
    """,
    re.VERBOSE,
)
_FAST_KIND: Final = (
    None,
    None,
    None,
    TokenKind.STRING,
    TokenKind.INTEGER,
    TokenKind.FLOAT,
    TokenKind.KEYWORD,
)

# String bodies: any byte 0x20..0xFD but the quote and the backslash, or a backslash and any
# byte 0x20..0xFD. A control byte or 0xFE/0xFF is junk.
# (Written as "unrolled loops": sre runs a single-class repeat far faster than an alternation.)
_DQ_BODY: Final = re.compile(rb'[^"\\\x00-\x1f\xfe\xff]*(?:\\[\x20-\xfd][^"\\\x00-\x1f\xfe\xff]*)*')
_SQ_BODY: Final = re.compile(rb"[^'\\\x00-\x1f\xfe\xff]*(?:\\[\x20-\xfd][^'\\\x00-\x1f\xfe\xff]*)*")
_DIGITS: Final = re.compile(rb"[0-9]*")
_LOWER: Final = re.compile(rb"[a-z]*")
# After junk QEMU skips until a structural character, a control byte other than tab, or
# 0xFE/0xFF; that byte is then lexed afresh (newline and CR as whitespace, the rest as junk).
_RECOVERY_SKIP: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f,:\[\]{}\xfe\xff]*")


# Lexer states (plain ints: this is the hot path). The number states are named after what
# was read last.
_START: Final = 0
_RECOVERY: Final = 1
_DQ_STRING: Final = 2
_SQ_STRING: Final = 3
_KEYWORD: Final = 4
_SIGN: Final = 10
_ZERO: Final = 11
_INT: Final = 12
_DOT: Final = 13
_FRAC: Final = 14
_EXP_E: Final = 15
_EXP_SIGN: Final = 16
_EXP: Final = 17


_NUMBER_FINAL: Final = {
    _ZERO: TokenKind.INTEGER,
    _INT: TokenKind.INTEGER,
    _FRAC: TokenKind.FLOAT,
    _EXP: TokenKind.FLOAT,
}
_D0, _D9 = ord("0"), ord("9")


class JSONLexer:
    """Tokens from a byte stream; ``feed`` returns the tokens completed by the new bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # next byte to look at
        self._start = 0  # first byte of the pending token
        self._state: int = _START

    def reset(self) -> None:
        """Forget everything, as QEMU does when the client disconnects."""
        self.__init__()  # type: ignore[misc]

    def feed(self, data: bytes) -> list[Token]:
        out: list[Token] = []
        self._buf += data
        self._run(out)
        # Drop consumed bytes so the buffer holds only the pending token.
        if self._start:
            del self._buf[: self._start]
            self._pos -= self._start
            self._start = 0
        return out

    def flush(self) -> list[Token]:
        """End of input: finish or reject the pending token (QEMU's ``json_lexer_flush``)."""
        out: list[Token] = []
        state = self._state
        if state >= _SIGN:
            kind = _NUMBER_FINAL.get(state)
            text = bytes(self._buf[self._start : self._pos])
            out.append((kind, text) if kind is not None else (TokenKind.ERROR, text))
        elif state == _KEYWORD:
            out.append((TokenKind.KEYWORD, bytes(self._buf[self._start : self._pos])))
        elif state in (_DQ_STRING, _SQ_STRING):
            out.append((TokenKind.ERROR, bytes(self._buf[self._start :])))
        self._buf.clear()
        self._pos = self._start = 0
        self._state = _START
        return out

    # -- the machine ------------------------------------------------------------------------

    def _run(self, out: list[Token]) -> None:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        state = self._state
        fast = _FAST.match
        append = out.append
        while pos < n:
            if state == _START:
                m = fast(buf, pos)
                if m is not None:
                    group = m.lastindex
                    end = m.end()
                    if group == 2:
                        append(_STRUCTURAL[buf[pos]])
                    elif group != 1:
                        # QEMU cuts a token that has consumed more than MAX_TOKEN_SIZE bytes
                        # before the byte that completes it (a string's closing quote).
                        if end - pos - (group == 3) > MAX_TOKEN_SIZE:
                            pos = self._cut(out, pos)
                            continue
                        append((_FAST_KIND[group], bytes(buf[pos:end])))  # type: ignore[arg-type]
                    pos = end
                    continue
                c = buf[pos]
                self._start = pos
                if c == 0x22:
                    state = _DQ_STRING
                elif c == 0x27:
                    state = _SQ_STRING
                elif c == 0x2D:
                    state = _SIGN
                elif c == 0x30:
                    state = _ZERO
                elif _D0 < c <= _D9:
                    state = _INT
                elif 0x61 <= c <= 0x7A:
                    state = _KEYWORD
                else:
                    append((TokenKind.ERROR, bytes(buf[pos : pos + 1])))
                    pos += 1
                    state = _RECOVERY
                    continue
                pos += 1
            elif state == _RECOVERY:
                pos = _RECOVERY_SKIP.match(buf, pos).end()  # type: ignore[union-attr]
                if pos < n:
                    state = _START
            elif state == _DQ_STRING or state == _SQ_STRING:
                body = _DQ_BODY if state == _DQ_STRING else _SQ_BODY
                end = body.match(buf, pos).end()  # type: ignore[union-attr]
                if end == n or (buf[end] == 0x5C and end + 1 == n):
                    pos = end  # wait for the rest (a lone backslash is re-read with it)
                    break
                # The byte at ``end`` (or after the backslash) ends the token: the closing
                # quote makes a string, anything else is junk.
                last = end if buf[end] != 0x5C else end + 1
                if last - self._start > MAX_TOKEN_SIZE:
                    pos = self._cut(out, self._start)
                    state = _START
                    continue
                quote = 0x22 if state == _DQ_STRING else 0x27
                if buf[end] == quote:
                    append((TokenKind.STRING, bytes(buf[self._start : end + 1])))
                    state = _START
                else:
                    append((TokenKind.ERROR, bytes(buf[self._start : last + 1])))
                    state = _RECOVERY
                pos = last + 1
            elif state == _KEYWORD:
                end = _LOWER.match(buf, pos).end()  # type: ignore[union-attr]
                if end - self._start > MAX_TOKEN_SIZE:
                    pos = self._cut(out, self._start)
                    state = _START
                    continue
                pos = end
                if end == n:
                    break
                append((TokenKind.KEYWORD, bytes(buf[self._start : end])))
                state = _START
            else:
                pos, state = self._number(out, pos, state)
        self._pos = pos
        self._state = state
        if state in (_START, _RECOVERY):
            self._start = pos
        elif n - self._start > MAX_TOKEN_SIZE:
            self._pos = self._cut(out, self._start)
            self._state = _START
            self._run(out)

    def _number(self, out: list[Token], pos: int, state: int) -> tuple[int, int]:
        """Advance a number by one step; returns the new position and state."""
        buf = self._buf
        n = len(buf)
        if state in (_INT, _FRAC, _EXP):
            pos = _DIGITS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos - self._start > MAX_TOKEN_SIZE:
                return self._cut(out, self._start), _START
            if pos == n:
                return pos, state
        c = buf[pos]
        digit = _D0 <= c <= _D9
        nxt: int | None = None
        if state == _SIGN:
            nxt = _ZERO if c == _D0 else _INT if digit else None
        elif state == _ZERO:
            if c == 0x2E:
                nxt = _DOT
            elif not digit:
                return self._number_end(out, pos, TokenKind.INTEGER)
        elif state == _INT:
            if c == 0x2E:
                nxt = _DOT
            elif c in (0x65, 0x45):
                nxt = _EXP_E
            else:
                return self._number_end(out, pos, TokenKind.INTEGER)
        elif state == _DOT:
            nxt = _FRAC if digit else None
        elif state == _FRAC:
            if c in (0x65, 0x45):
                nxt = _EXP_E
            else:
                return self._number_end(out, pos, TokenKind.FLOAT)
        elif state == _EXP_E:
            nxt = _EXP if digit else _EXP_SIGN if c in (0x2B, 0x2D) else None
        elif state == _EXP_SIGN:
            nxt = _EXP if digit else None
        else:  # EXP, not followed by a digit
            return self._number_end(out, pos, TokenKind.FLOAT)
        if nxt is None:
            out.append((TokenKind.ERROR, bytes(buf[self._start : pos + 1])))
            return pos + 1, _RECOVERY
        if pos + 1 - self._start > MAX_TOKEN_SIZE:
            return self._cut(out, self._start), _START
        return pos + 1, nxt

    def _number_end(self, out: list[Token], pos: int, kind: TokenKind) -> tuple[int, int]:
        out.append((kind, bytes(self._buf[self._start : pos])))
        return pos, _START

    def _cut(self, out: list[Token], start: int) -> int:
        """QEMU hands a pending token over once it holds MAX_TOKEN_SIZE + 1 bytes."""
        out.append((TokenKind.OVERSIZE, b""))
        return start + MAX_TOKEN_SIZE + 1
