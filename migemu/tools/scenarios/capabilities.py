"""Scenarios for ``migrate-set-capabilities`` / ``query-migrate-capabilities``.

Every capability switched on and off alone (queried after each change), the request-shape
errors of the capability list, and the cross-checks of ``migrate_caps_check`` that do not
depend on the host (postcopy-ram, background-snapshot and zero-copy-send need kernel
features, so their *success* is left out; only host-independent refusals are recorded).
"""

from __future__ import annotations

from typing import Any

from migemu.tools.scenarios.steps import Step, qmp, quit_, session

SET = "migrate-set-capabilities"
QUERY = "query-migrate-capabilities"

# Capabilities whose "on" does not depend on the host kernel or build options.
PORTABLE = [
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
]


def cap(name: Any, state: Any) -> dict[str, Any]:
    return {"capability": name, "state": state}


def caps_good() -> list[Step]:
    n, m = "caps_good", "src"
    steps = session(n, m)
    steps.append(qmp(m, QUERY))
    for name in PORTABLE:
        steps.append(qmp(m, SET, {"capabilities": [cap(name, True)]}))
        steps.append(qmp(m, QUERY))
        steps.append(qmp(m, SET, {"capabilities": [cap(name, False)]}))
    steps += [
        qmp(m, SET, {"capabilities": []}),
        qmp(m, SET, {"capabilities": [cap("multifd", True), cap("events", True)]}),
        qmp(m, QUERY),
        # the last entry for a capability wins
        qmp(m, SET, {"capabilities": [cap("events", False), cap("events", True)]}),
        qmp(m, SET, {"capabilities": [cap("xbzrle", True), cap("xbzrle", False)]}),
        qmp(m, SET, {"capabilities": [{"state": True, "capability": "auto-converge"}]}),
        qmp(m, QUERY),
        qmp(m, SET, {"capabilities": [cap(name, False) for name in PORTABLE]}),
        qmp(m, QUERY),
    ]
    return steps + quit_(m)


def caps_bad() -> list[Step]:
    n, m = "caps_bad", "src"
    bad_args: list[Any] = [
        None,
        {},
        {"capabilities": None},
        {"capabilities": {}},
        {"capabilities": "multifd"},
        {"capabilities": [1]},
        {"capabilities": [None]},
        {"capabilities": [[]]},
        {"capabilities": [{}]},
        {"capabilities": [{"capability": "multifd"}]},
        {"capabilities": [{"state": True}]},
        {"capabilities": [cap("foo", True)]},
        {"capabilities": [cap("Multifd", True)]},
        {"capabilities": [cap("", True)]},
        {"capabilities": [cap(1, True)]},
        {"capabilities": [cap(None, True)]},
        {"capabilities": [cap("multifd", "true")]},
        {"capabilities": [cap("multifd", 1)]},
        {"capabilities": [cap("multifd", None)]},
        {"capabilities": [cap("multifd", [])]},
        {"capabilities": [{"capability": "multifd", "state": True, "foo": 1}]},
        {"capabilities": [cap("events", True), cap("foo", True)]},
        {"capabilities": [cap("events", True), {"capability": "multifd"}]},
        {"capabilities": [cap("foo", "bar")]},
        {"capabilities": [], "foo": 1},
        # incompatible combinations (host independent)
        {"capabilities": [cap("multifd", True), cap("compress", True)]},
        {"capabilities": [cap("zero-copy-send", True)]},
        {"capabilities": [cap("zero-copy-send", True), cap("compress", True)]},
        {"capabilities": [cap("postcopy-preempt", True)]},
    ]
    steps = session(n, m)
    for args in bad_args:
        if args is None:
            steps.append(qmp(m, SET))
        else:
            steps.append(qmp(m, SET, args))
    steps.append(qmp(m, QUERY))
    # the check is on the merged set: each half is fine alone, not together
    steps += [
        qmp(m, SET, {"capabilities": [cap("multifd", True)]}),
        qmp(m, SET, {"capabilities": [cap("compress", True)]}),
        qmp(m, QUERY),
        qmp(m, SET, {"capabilities": [cap("multifd", False), cap("compress", True)]}),
        qmp(m, SET, {"capabilities": [cap("multifd", True)]}),
        qmp(m, QUERY),
        qmp(m, SET, {"capabilities": [cap("compress", False), cap("x-ignore-shared", True)]}),
        qmp(m, QUERY),
        qmp(m, SET, {"capabilities": [cap("zero-copy-send", False)]}),
        qmp(m, SET, {"capabilities": [cap("postcopy-preempt", False)]}),
        qmp(m, QUERY),
    ]
    return steps + quit_(m)


def caps_postcopy_zerocopy() -> list[Step]:
    """postcopy-ram and zero-copy-send where they do not depend on the host: on a source
    (the userfaultfd probe runs only on an incoming VM) and with a Debian 12 build."""
    n, m = "caps_postcopy_zerocopy", "src"
    steps = session(n, m)
    steps += [
        qmp(m, SET, {"capabilities": [cap("postcopy-ram", True), cap("x-ignore-shared", True)]}),
        qmp(m, SET, {"capabilities": [cap("postcopy-ram", True), cap("postcopy-preempt", True)]}),
        qmp(m, QUERY),
        qmp(m, SET, {"capabilities": [cap("x-ignore-shared", True)]}),
        qmp(m, SET, {"capabilities": [cap("compress", True)]}),
        qmp(m, SET, {"capabilities": [cap("postcopy-preempt", False), cap("compress", True)]}),
        qmp(m, SET, {"capabilities": [cap("postcopy-ram", False), cap("postcopy-preempt", True)]}),
        qmp(m, SET, {"capabilities": [cap("postcopy-ram", False), cap("compress", False)]}),
        qmp(m, QUERY),
        qmp(m, SET, {"capabilities": [cap("multifd", True), cap("zero-copy-send", True)]}),
        qmp(m, QUERY),
        qmp(m, "migrate-set-parameters", {"multifd-compression": "zstd"}),
        qmp(m, "migrate-set-parameters", {"multifd-compression": "none"}),
        qmp(m, "migrate-set-parameters", {"tls-creds": "tls0"}),
        qmp(m, "migrate-set-parameters", {"tls-creds": None}),
        qmp(m, SET, {"capabilities": [cap("multifd", False)]}),
        qmp(m, SET, {"capabilities": [cap("xbzrle", True)]}),
        qmp(m, SET, {"capabilities": [cap("zero-copy-send", False), cap("xbzrle", True)]}),
        qmp(m, "migrate-set-parameters", {"multifd-compression": "zlib"}),
        qmp(m, SET, {"capabilities": [cap("multifd", True), cap("zero-copy-send", True)]}),
        qmp(m, "query-migrate-parameters"),
        qmp(m, QUERY),
    ]
    return steps + quit_(m)


SCENARIOS = {
    "caps_good": caps_good(),
    "caps_bad": caps_bad(),
    "caps_postcopy_zerocopy": caps_postcopy_zerocopy(),
}
