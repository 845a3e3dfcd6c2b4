"""QEMU 7.2's JSON, read and written exactly as the QMP monitor does (qapi layer, sans-IO).

``JSONStreamParser`` is the monitor's input path (lexer -> streamer -> parser): feed bytes as
they arrive, get ``Parsed`` values and ``JSONParseError`` replies in QEMU's order, with its
resynchronisation after junk. ``dumps``/``encode_message`` are its output path: compact,
ASCII-only, ``%.17g`` doubles and object members in QDict hash order. The QMP-level checks
("QMP input must be a JSON object", ...) belong to the monitor, not here.
"""

from migemu.qapi.qjson.lexer import MAX_TOKEN_SIZE, JSONLexer, Token, TokenKind
from migemu.qapi.qjson.parser import (
    MAX_NESTING,
    MAX_TOKEN_COUNT,
    JSONParseError,
    JSONStreamParser,
    JSONValue,
    Parsed,
    decode_lenient,
    loads,
)
from migemu.qapi.qjson.writer import (
    QDICT_BUCKETS,
    dumps,
    encode_message,
    format_double,
    qdict_bucket,
    qdict_order,
    quote_string,
)

__all__ = [
    "MAX_NESTING",
    "MAX_TOKEN_COUNT",
    "MAX_TOKEN_SIZE",
    "QDICT_BUCKETS",
    "JSONLexer",
    "JSONParseError",
    "JSONStreamParser",
    "JSONValue",
    "Parsed",
    "Token",
    "TokenKind",
    "decode_lenient",
    "dumps",
    "encode_message",
    "format_double",
    "loads",
    "qdict_bucket",
    "qdict_order",
    "quote_string",
]
