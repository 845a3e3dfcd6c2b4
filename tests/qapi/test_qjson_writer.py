"""The QEMU 7.2 JSON writer, byte for byte.

Fixtures: every reply and event line QEMU wrote in the shared transcripts, the key orders of
facts §9.5, and ``id`` values echoed by qemu-system-x86_64 7.2.22 (recorded below).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from migemu.qapi.qjson import (
    JSONStreamParser,
    Parsed,
    dumps,
    encode_message,
    qdict_bucket,
    qdict_order,
)

TRANSCRIPTS = Path("/work/shared/reference/transcripts")


def _insertion_order(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Rebuild QEMU's insertion order from its output order.

    Buckets must come out ascending (this checks the hash); inside a bucket QEMU prints the
    newest member first, so the insertion order is that run reversed.
    """
    buckets = [qdict_bucket(key) for key, _ in pairs]
    assert buckets == sorted(buckets), f"members not in bucket order: {[k for k, _ in pairs]}"
    ordered: list[tuple[str, Any]] = []
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and buckets[j] == buckets[i]:
            j += 1
        ordered += reversed(pairs[i:j])
        i = j
    return dict(ordered)


def _transcript_lines() -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for path in sorted(TRANSCRIPTS.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            record = json.loads(line)
            if record.get("dir") in ("s2c", "event") and "raw" in record:
                lines.append((f"{path.stem}:{number}", record["raw"]))
    return lines


_LINES = _transcript_lines() if TRANSCRIPTS.is_dir() else []


@pytest.mark.skipif(not _LINES, reason="shared transcripts not present")
def test_every_transcript_line_is_reproduced() -> None:
    assert len(_LINES) > 300
    for where, raw in _LINES:
        value = json.loads(raw, object_pairs_hook=_insertion_order)
        assert encode_message(value) == raw.encode("ascii"), where


@pytest.mark.skipif(not _LINES, reason="shared transcripts not present")
def test_transcript_lines_read_back_through_our_reader() -> None:
    parser = JSONStreamParser()
    for where, raw in _LINES:
        results = parser.feed(raw.encode("ascii"))
        assert results == [Parsed(json.loads(raw))], where


# -- key order: facts §9.5, insertion order in, QEMU's output order out ------------------------

ORDERS: list[tuple[list[str], list[str]]] = [
    (["return", "id"], ["return", "id"]),
    (["error", "id"], ["id", "error"]),
    (["class", "desc"], ["class", "desc"]),
    (["event", "timestamp", "data"], ["timestamp", "event", "data"]),
    (["seconds", "microseconds"], ["seconds", "microseconds"]),
    (["QMP"], ["QMP"]),
    (["version", "capabilities"], ["version", "capabilities"]),
    (["qemu", "package"], ["qemu", "package"]),
    (["major", "minor", "micro"], ["micro", "minor", "major"]),
    (["capability", "state"], ["state", "capability"]),
    (["running", "singlestep", "status"], ["status", "singlestep", "running"]),
    (["type", "host", "port", "ipv4"], ["port", "ipv4", "host", "type"]),
    # observed on QEMU: "aa" and "aq" share bucket 110, the newest comes first
    (["aa", "aq"], ["aq", "aa"]),
    (["aq", "aa"], ["aa", "aq"]),
    (["b", "a", "c", "d", "e", "f"], ["d", "e", "a", "f", "b", "c"]),
]

# Facts §9.5's precomputed orders, checked as a set of keys sorted by our hash (no two of
# these keys share a bucket, so the order does not depend on the insertion order).
MIGRATION_INFO_72 = (
    "expected-downtime, postcopy-blocktime, cpu-throttle-percentage, vfio, compression, "
    "xbzrle-cache, status, disk, setup-time, error-desc, downtime, total-time, "
    "postcopy-vcpu-blocktime, ram, socket-address, blocked-reasons"
)
MIGRATION_STATS_72 = (
    "total, postcopy-requests, dirty-sync-count, multifd-bytes, pages-per-second, "
    "downtime-bytes, page-size, remaining, postcopy-bytes, mbps, transferred, "
    "dirty-sync-missed-zero-copy, precopy-bytes, duplicate, dirty-pages-rate, skipped, "
    "normal-bytes, normal"
)
MIGRATION_PARAMETERS_72 = (
    "cpu-throttle-tailslow, xbzrle-cache-size, cpu-throttle-initial, announce-max, "
    "decompress-threads, block-bitmap-mapping, compress-threads, compress-level, "
    "multifd-channels, multifd-zstd-level, announce-initial, block-incremental, "
    "compress-wait-thread, downtime-limit, tls-authz, multifd-compression, announce-rounds, "
    "announce-step, tls-creds, multifd-zlib-level, max-cpu-throttle, max-postcopy-bandwidth, "
    "tls-hostname, throttle-trigger-threshold, max-bandwidth, x-checkpoint-delay, "
    "cpu-throttle-increment"
)


@pytest.mark.parametrize(("inserted", "printed"), ORDERS)
def test_qdict_order(inserted: list[str], printed: list[str]) -> None:
    assert qdict_order(inserted) == printed
    assert dumps(dict.fromkeys(inserted, 0)) == "{" + ", ".join(f'"{k}": 0' for k in printed) + "}"


@pytest.mark.parametrize("table", [MIGRATION_INFO_72, MIGRATION_STATS_72, MIGRATION_PARAMETERS_72])
def test_facts_precomputed_orders(table: str) -> None:
    keys = table.split(", ")
    buckets = [qdict_bucket(k) for k in keys]
    assert len(set(buckets)) == len(keys)
    assert qdict_order(sorted(keys)) == keys
    assert qdict_order(list(reversed(keys))) == keys


# -- values, as QEMU echoed them in ``id`` --------------------------------------------------

ECHOES: list[tuple[Any, str]] = [
    (
        'a/b\\c"d\b\f\n\r\t\x01\x1f\x7f\x80\u00e9\ufffd\U0001f600 \x00x/',
        '"a/b\\\\c\\"d\\b\\f\\n\\r\\t\\u0001\\u001F\\u007F\\u0080\\u00E9\\uFFFD\\uD83D\\uDE00 '
        '\\u0000x/"',
    ),
    ("\u00e9\U0001f600\x7f", '"\\u00E9\\uD83D\\uDE00\\u007F"'),
    ("'", '"\'"'),
    ('a"b"', '"a\\"b\\""'),
    ("a\x00b", '"a\\u0000b"'),
    (
        {"b": 1, "a": [], "c": {}, "d": None, "e": True, "f": False},
        '{"d": null, "e": true, "a": [], "f": false, "b": 1, "c": {}}',
    ),
    (
        [
            math.inf,
            -math.inf,
            2**63 - 1,
            2**63,
            2**64 - 1,
            2.0**64,
            -(2**63),
            -(2.0**63),
            1.0,
            0.1,
            -0.0,
            1e5,
            1e-5,
            0,
            0,
            1.2345678901234568e22,
        ],
        "[inf, -inf, 9223372036854775807, 9223372036854775808, 18446744073709551615, "
        "1.8446744073709552e+19, -9223372036854775808, -9.2233720368547758e+18, 1, "
        "0.10000000000000001, -0, 100000, 1.0000000000000001e-05, 0, 0, 1.2345678901234568e+22]",
    ),
    ({"aa": 1, "aq": 2}, '{"aq": 2, "aa": 1}'),
    ([], "[]"),
    ({}, "{}"),
    ([[], {}, [1, [2]]], "[[], {}, [1, [2]]]"),
    (322.43386301369867, "322.43386301369867"),
    (0.0, "0"),
]


@pytest.mark.parametrize(("value", "text"), ECHOES)
def test_values_as_qemu_writes_them(value: Any, text: str) -> None:
    assert dumps(value) == text


def test_what_qemu_cannot_hold_comes_out_as_replacement() -> None:
    # lone surrogates and noncharacters do not survive QEMU's modified UTF-8 round
    assert dumps("\ud800x\ufffe\uffff\ufdd0\U0010ffff") == '"\\uFFFDx\\uFFFD\\uFFFD\\uFFFD\\uFFFD"'
    assert dumps(math.nan) == "nan"
    assert dumps(-math.nan) == "-nan"


def test_encode_message() -> None:
    reply = {"return": {}, "id": "x"}
    assert encode_message(reply) == b'{"return": {}, "id": "x"}\r\n'
    error = {"error": {"class": "GenericError", "desc": "JSON parse error, stray '\ufffd'"}}
    assert encode_message(error) == (
        b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n'
    )


def test_tuples_and_deep_nesting() -> None:
    assert dumps((1, (2, 3))) == "[1, [2, 3]]"
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert dumps(deep) == "[" * 5000 + "[]" + "]" * 5000


def test_unwritable_values() -> None:
    with pytest.raises(TypeError):
        dumps({1: 2})
    with pytest.raises(TypeError):
        dumps(object())
