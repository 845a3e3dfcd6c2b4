"""Scenarios for ``migrate-set-parameters`` / ``query-migrate-parameters``.

Good values for every member (queried after each set), every wrong JSON type per member
(the QAPI input visitor's messages), the range checks of ``migrate_params_check`` in order,
unknown members, several bad members in one request, the zlib/zstd-level quirk of 7.2 and
``-global migration.*`` defaults.
"""

from __future__ import annotations

from typing import Any

from migemu.tools.scenarios.steps import Step, qmp, quit_, session

SET = "migrate-set-parameters"
QUERY = "query-migrate-parameters"

# MigrateSetParameters members in schema order with their QAPI type and one good value.
MEMBERS: list[tuple[str, str, Any]] = [
    ("announce-initial", "size", 60),
    ("announce-max", "size", 600),
    ("announce-rounds", "size", 6),
    ("announce-step", "size", 110),
    ("compress-level", "uint8", 9),
    ("compress-threads", "uint8", 4),
    ("compress-wait-thread", "bool", False),
    ("decompress-threads", "uint8", 3),
    ("throttle-trigger-threshold", "uint8", 100),
    ("cpu-throttle-initial", "uint8", 30),
    ("cpu-throttle-increment", "uint8", 99),
    ("cpu-throttle-tailslow", "bool", True),
    ("tls-creds", "StrOrNull", "tls0"),
    ("tls-hostname", "StrOrNull", "host.example"),
    ("tls-authz", "StrOrNull", "authz0"),
    ("max-bandwidth", "size", 1048576),
    ("downtime-limit", "uint64", 2000000),
    ("x-checkpoint-delay", "uint32", 4294967295),
    ("block-incremental", "bool", True),
    ("multifd-channels", "uint8", 255),
    ("xbzrle-cache-size", "size", 4096),
    ("max-postcopy-bandwidth", "size", 18446744073709551615),
    ("max-cpu-throttle", "uint8", 50),
    ("multifd-compression", "MultiFDCompression", "zstd"),
    ("multifd-zlib-level", "uint8", 9),
    ("multifd-zstd-level", "uint8", 20),
    ("block-bitmap-mapping", "list", []),
]

BAD_BY_TYPE: dict[str, list[Any]] = {
    "uint8": ["1", 1.5, 1.0, True, -1, 256, 18446744073709551616, None, {}, [], [1]],
    "uint32": ["1", 1.5, True, -1, 4294967296, None, {}, []],
    "uint64": ["1", 1.5, True, -1, 18446744073709551616, -9223372036854775809, None, {}, []],
    "size": ["1", 1.5, True, -1, 18446744073709551616, None, {}, []],
    "bool": ["true", 1, 0, 1.5, None, {}, []],
    "StrOrNull": [1, 1.5, True, -1, {}, [], ["a"]],
    "MultiFDCompression": [1, True, None, {}, [], "lz4", "ZSTD", "", "None", " zstd"],
    "list": ["x", 1, True, None, {}, [1], [{}], [None]],
}


def params_good() -> list[Step]:
    n, m = "params_good", "src"
    steps = session(n, m)
    steps.append(qmp(m, QUERY))
    for name, _kind, good in MEMBERS:
        steps.append(qmp(m, SET, {name: good}))
        steps.append(qmp(m, QUERY))
    steps += [
        qmp(m, SET),
        qmp(m, SET, {}),
        # null clears a TLS string back to ""
        qmp(m, SET, {"tls-creds": None, "tls-hostname": None, "tls-authz": None}),
        qmp(m, QUERY),
        qmp(m, SET, {"tls-creds": "", "tls-hostname": "", "tls-authz": ""}),
        qmp(m, QUERY),
        qmp(
            m,
            SET,
            {
                "block-bitmap-mapping": [
                    {
                        "node-name": "drive0",
                        "alias": "a0",
                        "bitmaps": [{"name": "b0", "alias": "ba0"}],
                    }
                ]
            },
        ),
        qmp(m, QUERY),
        qmp(m, SET, {"multifd-channels": 8, "max-bandwidth": 0, "downtime-limit": 0}),
        qmp(m, QUERY),
    ]
    return steps + quit_(m)


def params_types() -> list[Step]:
    n, m = "params_types", "src"
    steps = session(n, m)
    for name, kind, _good in MEMBERS:
        for bad in BAD_BY_TYPE[kind]:
            steps.append(qmp(m, SET, {name: bad}))
    steps.append(qmp(m, QUERY))
    return steps + quit_(m)


def params_range() -> list[Step]:
    n, m = "params_range", "src"
    cases: list[dict[str, Any]] = [
        {"compress-level": 10},
        {"compress-level": 255},
        {"compress-threads": 0},
        {"decompress-threads": 0},
        {"throttle-trigger-threshold": 0},
        {"throttle-trigger-threshold": 101},
        {"cpu-throttle-initial": 0},
        {"cpu-throttle-initial": 100},
        {"cpu-throttle-increment": 0},
        {"cpu-throttle-increment": 100},
        {"max-bandwidth": 18446744073709551615},
        {"downtime-limit": 2000001},
        {"downtime-limit": 18446744073709551615},
        {"multifd-channels": 0},
        {"xbzrle-cache-size": 0},
        {"xbzrle-cache-size": 4095},
        {"xbzrle-cache-size": 12288},
        {"xbzrle-cache-size": 18446744073709551615},
        {"max-cpu-throttle": 19},
        {"max-cpu-throttle": 100},
        {"cpu-throttle-initial": 60, "max-cpu-throttle": 50},
        {"cpu-throttle-initial": 99},
        {"announce-initial": 100001},
        {"announce-max": 100001},
        {"announce-rounds": 1001},
        {"announce-step": 0},
        {"announce-step": 10001},
        # the 7.2 quirk: levels are neither checked nor stored
        {"multifd-zlib-level": 10},
        {"multifd-zlib-level": 255},
        {"multifd-zstd-level": 21},
        {"multifd-zstd-level": 0},
        {"multifd-zlib-level": 0},
        # several bad members: checks in migrate_params_check order
        {"multifd-channels": 0, "compress-level": 10},
        {"announce-step": 0, "downtime-limit": 2000001, "cpu-throttle-increment": 0},
        {"xbzrle-cache-size": 1, "max-cpu-throttle": 100},
        # several bad members: visitor errors come in schema order, unknown ones last
        {"multifd-channels": "x", "compress-level": 300},
        {"compress-level": 300, "multifd-channels": "x"},
        {"foo": 1, "multifd-channels": "x"},
        {"foo": 1, "multifd-channels": 0},
        {"foo": 1},
        {"foo": 1, "bar": 2},
        {"bar": 2, "foo": 1},
        {"zzz": 1, "aaa": 2, "mmm": 3},
        {"multifd_channels": 4},
        {"Multifd-Channels": 4},
        {"multifd-channels": 4, "foo": 1},
        {"multifd-channels": 4, "compress-level": 10},
        # nothing from a failed request was applied; valid boundaries are accepted
        {"multifd-channels": 1, "announce-step": 10000, "announce-rounds": 1000},
        {"announce-initial": 100000, "announce-max": 100000, "announce-step": 1},
        {"block-bitmap-mapping": [{"node-name": "n", "alias": "a", "bitmaps": []}] * 2},
        {"block-bitmap-mapping": [{"node-name": "n", "alias": "a"}]},
        {"block-bitmap-mapping": [{"node-name": "n", "alias": "a", "bitmaps": [], "x": 1}]},
    ]
    steps = session(n, m)
    for args in cases:
        steps.append(qmp(m, SET, args))
    steps.append(qmp(m, QUERY))
    return steps + quit_(m)


def params_global() -> list[Step]:
    n, m = "params_global", "src"
    steps = session(
        n,
        m,
        "-global",
        "migration.multifd-zlib-level=5",
        "-global",
        "migration.multifd-zstd-level=7",
        "-global",
        "migration.multifd-channels=4",
    )
    steps += [
        qmp(m, QUERY),
        qmp(m, SET, {"multifd-zlib-level": 9, "multifd-zstd-level": 3}),
        qmp(m, QUERY),
        qmp(m, SET, {"multifd-channels": 3}),
        qmp(m, QUERY),
    ]
    return steps + quit_(m)


SCENARIOS = {
    "params_good": params_good(),
    "params_types": params_types(),
    "params_range": params_range(),
    "params_global": params_global(),
}
