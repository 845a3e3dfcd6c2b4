"""QEMU 7.2's JSON streamer and parser: tokens in, values or parse errors out (qapi layer).

The streamer groups the lexer's tokens into messages: a message ends as soon as no brace or
bracket is open (or more closers than openers were seen), and it enforces the limits on size,
token count and nesting. Junk from the lexer, an exceeded limit or a parse failure each give
one error and throw the pending tokens away; that is how QEMU resynchronises. The parser turns
one message into a value with QEMU's rules: int64, then uint64, then double; modified UTF-8
strings (``\\u0000`` allowed, noncharacters and lone surrogates refused); first error wins.

``JSONStreamParser`` chains lexer, streamer and parser; it is what the QMP monitor feeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypeAlias

from migemu.qapi.qjson.lexer import MAX_TOKEN_SIZE, JSONLexer, Token, TokenKind

MAX_TOKEN_COUNT: Final = 2 << 20
MAX_NESTING: Final = 1024

JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"

_PREFIX: Final = "JSON parse error, "
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT64_MAX: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Parsed:
    """One complete JSON value read from the stream."""

    value: JSONValue


@dataclass(frozen=True, slots=True)
class JSONParseError:
    """One error QEMU would report; ``desc`` is the exact text of the GenericError reply."""

    desc: str


class _Fail(Exception):
    """Internal: the parser's first error; the message lacks the common prefix."""


# Plain-int aliases: attribute access on an Enum class is slow on the hot path.
_LCURLY: Final = int(TokenKind.LCURLY)
_RCURLY: Final = int(TokenKind.RCURLY)
_LSQUARE: Final = int(TokenKind.LSQUARE)
_RSQUARE: Final = int(TokenKind.RSQUARE)
_COMMA: Final = int(TokenKind.COMMA)
_COLON: Final = int(TokenKind.COLON)
_INTEGER: Final = int(TokenKind.INTEGER)
_FLOAT: Final = int(TokenKind.FLOAT)
_KEYWORD: Final = int(TokenKind.KEYWORD)
_STRING: Final = int(TokenKind.STRING)
_ERROR: Final = int(TokenKind.ERROR)
_OVERSIZE: Final = int(TokenKind.OVERSIZE)


# -- strings -------------------------------------------------------------------------------

# Unicode noncharacters: QEMU's modified UTF-8 decoder refuses them like malformed input.
_NONCHAR: Final = re.compile(
    "[\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"{chr(p << 16 | 0xFFFE)}{chr(p << 16 | 0xFFFF)}" for p in range(1, 17))
    + "]"
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES: Final = {
    ord('"'): '"',
    ord("'"): "'",
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}


def _valid_codepoint(cp: int) -> bool:
    return (
        0 <= cp <= 0x10FFFF
        and not 0xD800 <= cp <= 0xDFFF
        and not 0xFDD0 <= cp <= 0xFDEF
        and cp & 0xFFFE != 0xFFFE
    )


def _decode_strict(raw: bytes) -> str:
    """Raw string bytes as QEMU reads them: modified UTF-8, ``C0 80`` being U+0000."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if b"\xc0\x80" not in raw:
            raise _Fail("invalid UTF-8 sequence in string") from None
        # C0 can never continue a sequence, so swapping C0 80 for NUL changes nothing else.
        try:
            text = raw.replace(b"\xc0\x80", b"\x00").decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail("invalid UTF-8 sequence in string") from None
    if not text.isascii() and _NONCHAR.search(text):
        raise _Fail("invalid UTF-8 sequence in string")
    return text


def _mod_utf8_codepoint(data: bytes, i: int) -> tuple[int, int]:
    """Decode one sequence at ``i`` like QEMU: (code point or -1, index after it)."""
    c = data[i]
    if c < 0x80:
        return c, i + 1
    if c < 0xC0 or c >= 0xFE:
        return -1, i + 1
    if c < 0xE0:
        count, cp, least = 1, c & 0x1F, 0x80
    elif c < 0xF0:
        count, cp, least = 2, c & 0x0F, 0x800
    elif c < 0xF8:
        count, cp, least = 3, c & 0x07, 0x10000
    elif c < 0xFC:
        count, cp, least = 4, c & 0x03, 0x200000
    else:
        count, cp, least = 5, c & 0x01, 0x4000000
    j = i + 1
    for _ in range(count):
        if j >= len(data) or data[j] & 0xC0 != 0x80:
            return -1, j
        cp = cp << 6 | data[j] & 0x3F
        j += 1
    if cp < least and not (cp == 0 and count == 1):
        return -1, j
    return (cp if _valid_codepoint(cp) else -1), j


def decode_lenient(data: bytes) -> str:
    """Bytes QEMU prints with ``%s`` into a message, as its JSON writer will render them.

    The C string ends at the first NUL; each malformed or invalid sequence becomes one U+FFFD.
    """
    data = data.split(b"\x00", 1)[0]
    try:
        text = data.decode("utf-8")
        if text.isascii() or not _NONCHAR.search(text):
            return text
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    i = 0
    while i < len(data):
        cp, i = _mod_utf8_codepoint(data, i)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


def _hex4(body: bytes, i: int) -> int:
    chunk = body[i : i + 4]
    if len(chunk) == 4 and all(c in _HEX for c in chunk):
        return int(chunk, 16)
    return -1


def _string_value(token: bytes) -> str:
    body = token[1:-1]
    if b"\\" not in body:
        return _decode_strict(body)
    parts: list[str] = []
    pos = 0
    while True:
        j = body.find(b"\\", pos)
        if j < 0:
            parts.append(_decode_strict(body[pos:]))
            return "".join(parts)
        if j > pos:
            parts.append(_decode_strict(body[pos:j]))
        c = body[j + 1]
        simple = _SIMPLE_ESCAPES.get(c)
        if simple is not None:
            parts.append(simple)
            pos = j + 2
            continue
        if c != 0x75:  # 'u'
            raise _Fail("invalid escape sequence in string")
        cp = _hex4(body, j + 2)
        end = j + 6
        if 0xD800 <= cp <= 0xDBFF and body[end : end + 2] == b"\\u":
            low = _hex4(body, end + 2)
            if 0xDC00 <= low <= 0xDFFF:
                cp = 0x10000 + ((cp & 0x3FF) << 10) + (low & 0x3FF)
                end += 6
            else:
                cp = -1
        if not _valid_codepoint(cp):
            # QEMU quotes what it read, but never past the end of the token.
            shown = decode_lenient(token[j + 1 : end + 1])
            raise _Fail(f"{shown} is not a valid Unicode character")
        parts.append(chr(cp))
        pos = end


# -- numbers and keywords ------------------------------------------------------------------


def _integer_value(text: bytes) -> int | float:
    value = int(text)
    # QEMU keeps an int64, else (for non-negative text) a uint64, else parses a double.
    if _INT64_MIN <= value <= _UINT64_MAX and (value <= _INT64_MAX or text[0] != 0x2D):
        return value
    return float(text)


_KEYWORDS: Final[dict[bytes, bool | None]] = {b"true": True, b"false": False, b"null": None}


# -- the parser ----------------------------------------------------------------------------

_DICT_KEY: Final = 0
_DICT_VALUE: Final = 1
_LIST: Final = 2


def parse_tokens(tokens: list[Token]) -> JSONValue:
    """One value from one message's tokens, or ``_Fail`` with QEMU's first error.

    Iterative, because QEMU allows 1024 levels and Python's stack does not.
    """
    n = len(tokens)
    i = 0
    # Each frame: [kind, container, pending key]
    stack: list[list[object]] = []
    while True:
        # Read one value at tokens[i].
        if i == n:
            raise _Fail("premature EOI")
        kind, text = tokens[i]
        i += 1
        value: JSONValue
        if kind == _STRING:
            value = _string_value(text)
        elif kind == _LCURLY:
            if i == n:
                raise _Fail("premature EOI")
            if tokens[i][0] == _RCURLY:
                i += 1
                value = {}
            else:
                stack.append([_DICT_KEY, {}, None])
                continue
        elif kind == _LSQUARE:
            if i == n:
                raise _Fail("premature EOI")
            if tokens[i][0] == _RSQUARE:
                i += 1
                value = []
            else:
                stack.append([_LIST, [], None])
                continue
        elif kind == _INTEGER:
            value = _integer_value(text)
        elif kind == _FLOAT:
            value = float(text)
        elif kind == _KEYWORD:
            if text not in _KEYWORDS:
                raise _Fail(f"invalid keyword '{text.decode('ascii')}'")
            value = _KEYWORDS[text]
        else:
            raise _Fail("expecting value")
        # Hand the value to the enclosing containers, closing as many as end here.
        while True:
            if not stack:
                return value
            frame = stack[-1]
            if frame[0] == _DICT_KEY:
                if not isinstance(value, str):
                    raise _Fail("key is not a string in object")
                if i == n:
                    raise _Fail("premature EOI")
                if tokens[i][0] != _COLON:
                    raise _Fail("missing : in object pair")
                i += 1
                frame[0] = _DICT_VALUE
                frame[2] = value
                break
            if frame[0] == _DICT_VALUE:
                # QEMU checks for a duplicate only once the value has parsed.
                container = frame[1]
                assert isinstance(container, dict)
                key = frame[2]
                assert isinstance(key, str)
                if key in container:
                    raise _Fail("duplicate key")
                container[key] = value
                close, separator_error = _RCURLY, "expected separator in dict"
                frame[0] = _DICT_KEY
            else:
                container = frame[1]
                assert isinstance(container, list)
                container.append(value)
                close, separator_error = _RSQUARE, "expected separator in list"
            if i == n:
                raise _Fail("premature EOI")
            next_kind = tokens[i][0]
            i += 1
            if next_kind == close:
                stack.pop()
                value = container
                continue
            if next_kind != _COMMA:
                raise _Fail(separator_error)
            break


# -- the streamer --------------------------------------------------------------------------


class JSONStreamParser:
    """QEMU's monitor input path: feed bytes as they arrive, get values and errors in order.

    ``feed`` never raises; each result is a ``Parsed`` or a ``JSONParseError`` whose ``desc``
    is what QEMU puts in its GenericError reply (no ``id``). Call ``reset`` when the client
    goes away (QEMU drops partial input then) and ``feed_eof`` only to parse a finite text.
    """

    def __init__(self) -> None:
        self._lexer = JSONLexer()
        self._tokens: list[Token] = []
        self._token_size = 0
        self._braces = 0
        self._brackets = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def feed(self, data: bytes) -> list[Parsed | JSONParseError]:
        out: list[Parsed | JSONParseError] = []
        self._process(self._lexer.feed(data), out)
        return out

    def feed_eof(self) -> list[Parsed | JSONParseError]:
        """Flush the pending token and parse whatever is left (``premature EOI`` if cut short)."""
        out: list[Parsed | JSONParseError] = []
        self._process(self._lexer.flush(), out)
        if self._tokens:
            self._emit(out)
        return out

    def _drop(self) -> None:
        self._tokens = []
        self._token_size = 0
        self._braces = 0
        self._brackets = 0

    def _emit(self, out: list[Parsed | JSONParseError]) -> None:
        try:
            out.append(Parsed(parse_tokens(self._tokens)))
        except _Fail as err:
            out.append(JSONParseError(_PREFIX + str(err)))
        self._drop()

    def _process(self, tokens: list[Token], out: list[Parsed | JSONParseError]) -> None:
        # Hot path: state lives in locals while the loop runs.
        pending = self._tokens
        size_total = self._token_size
        braces = self._braces
        brackets = self._brackets
        for token in tokens:
            kind = token[0]
            error: str | None = None
            if kind == _ERROR:
                error = f"{_PREFIX}stray '{decode_lenient(token[1])}'"
            elif kind == _OVERSIZE:
                # The cut token alone is over the limit, so the size check would fire.
                error = "JSON token size limit exceeded"
            else:
                if kind == _LCURLY:
                    braces += 1
                elif kind == _RCURLY:
                    braces -= 1
                elif kind == _LSQUARE:
                    brackets += 1
                elif kind == _RSQUARE:
                    brackets -= 1
                size = len(token[1])
                if size_total + size + 1 > MAX_TOKEN_SIZE:
                    error = "JSON token size limit exceeded"
                elif len(pending) + 1 > MAX_TOKEN_COUNT:
                    error = "JSON token count limit exceeded"
                elif braces + brackets > MAX_NESTING:
                    error = "JSON nesting depth limit exceeded"
                else:
                    pending.append(token)
                    size_total += size
                    if (braces > 0 or brackets > 0) and braces >= 0 and brackets >= 0:
                        continue
                    try:
                        out.append(Parsed(parse_tokens(pending)))
                    except _Fail as err:
                        out.append(JSONParseError(_PREFIX + str(err)))
            if error is not None:
                out.append(JSONParseError(error))
            # A message was parsed or refused: QEMU drops everything pending.
            pending = []
            size_total = braces = brackets = 0
        self._tokens = pending
        self._token_size = size_total
        self._braces = braces
        self._brackets = brackets


def loads(data: bytes | str) -> JSONValue:
    """Exactly one JSON value, read with QEMU's rules; ``ValueError`` with QEMU's text if not."""
    parser = JSONStreamParser()
    raw = data.encode("utf-8") if isinstance(data, str) else data
    results = parser.feed(raw) + parser.feed_eof()
    if len(results) != 1:
        raise ValueError(f"expected one JSON value, got {len(results)} results")
    result = results[0]
    if isinstance(result, JSONParseError):
        raise ValueError(result.desc)
    return result.value
