"""Scenarios for HMP through ``human-monitor-command`` without a running migration.

The shared ``i_hmp`` transcript covers HMP during real migrations (not replayable as is);
this one stays on one idle VM so every byte is deterministic: the ``info`` commands around
migration, ``migrate_set_parameter``'s string parsing (size suffixes, bad numbers) and
``migrate_set_capability``, run-state commands and HMP's own errors.
"""

from __future__ import annotations

from typing import Any

from migemu.tools.scenarios.steps import Step, qmp, quit_, request, send, session

HMC = "human-monitor-command"


def hmp(mon: str, line: str, events: int = 0) -> Step:
    return send(mon, request(HMC, {"command-line": line}), events=events)


def hmp_idle() -> list[Step]:
    n, m = "hmp_idle", "src"
    steps = session(n, m, "-name", "hmp-guest")
    lines = [
        "info status",
        "info name",
        "info uuid",
        "info version",
        "info migrate",
        "info migrate_capabilities",
        "info migrate_parameters",
        "info no-such-thing",
        "no-such-command",
        "",
        "   ",
        "migrate_set_parameter max-bandwidth 16M",
        "migrate_set_parameter max-bandwidth 1G",
        "migrate_set_parameter max-bandwidth 1.5k",
        "migrate_set_parameter max-bandwidth 100",
        "migrate_set_parameter max-bandwidth 0x10",
        "migrate_set_parameter max-bandwidth -1",
        "migrate_set_parameter max-bandwidth 16Q",
        "migrate_set_parameter max-bandwidth 99999999999999999999",
        "migrate_set_parameter xbzrle-cache-size 1M",
        "migrate_set_parameter xbzrle-cache-size 1000",
        "migrate_set_parameter downtime-limit 500",
        "migrate_set_parameter downtime-limit 2000001",
        "migrate_set_parameter downtime-limit 1k",
        "migrate_set_parameter multifd-channels 4",
        "migrate_set_parameter multifd-channels 0",
        "migrate_set_parameter multifd-channels 256",
        "migrate_set_parameter multifd-channels -1",
        "migrate_set_parameter multifd-channels 0x8",
        "migrate_set_parameter multifd-channels four",
        "migrate_set_parameter multifd-compression zlib",
        "migrate_set_parameter multifd-compression lz4",
        "migrate_set_parameter multifd-zlib-level 7",
        "migrate_set_parameter compress-wait-thread off",
        "migrate_set_parameter compress-wait-thread maybe",
        "migrate_set_parameter tls-creds tls0",
        "migrate_set_parameter tls-creds",
        "migrate_set_parameter announce-step 0",
        "migrate_set_parameter block-bitmap-mapping x",
        "migrate_set_parameter foo 1",
        "migrate_set_parameter",
        "info migrate_parameters",
        "migrate_set_capability events on",
        "migrate_set_capability xbzrle true",
        "migrate_set_capability compress yes",
        "migrate_set_capability multifd on",
        "migrate_set_capability multifd maybe",
        "migrate_set_capability foo on",
        "migrate_set_capability events",
        "info migrate_capabilities",
        "migrate_incoming tcp:127.0.0.1:0",
        "migrate foo:bar",
        "info migrate",
        "migrate_cancel",
        "migrate_set_speed 1M",
        "migrate_set_downtime 1",
    ]
    steps += [hmp(m, line) for line in lines]
    steps += [
        hmp(m, "stop", events=1),
        hmp(m, "info status"),
        hmp(m, "cont", events=1),
        hmp(m, "info status"),
    ]
    bad_args: list[Any] = [
        {},
        {"command-line": 1},
        {"command-line": "info status", "cpu-index": 0},
        {"command-line": "info status", "cpu-index": 5},
        {"command-line": "info status", "cpu-index": "0"},
        {"command-line": "info status", "foo": 1},
    ]
    steps += [qmp(m, HMC, args) for args in bad_args]
    return steps + quit_(m)


def hmp_parse() -> list[Step]:
    """HMP's own parser and help: quoting, flags, aliases, names, errors."""
    n, m = "hmp_parse", "src"
    steps = session(n, m)
    lines = [
        "help",
        "?",
        "help help",
        "help info",
        "help info migrate",
        "help info foo",
        "help foo",
        "help c",
        "help migrate",
        'help "info" status',
        'help "unterminated',
        "info",
        "info ",
        "info   foo",
        "  foo",
        "info migrate extra",
        "  info   status extra",
        "info history",
        "\tinfo\tstatus",
        "INFO status",
        "s x",
        "  s x",
        "q x",
        "s/x",
        "cont/",
        "migrate",
        "migrate -d",
        "migrate -x foo",
        "migrate -d -x foo",
        "migrate -dfoo:bar",
        'migrate "foo:bar',
        'migrate "a\\qb"',
        'migrate -d "foo:bar"',
        "migrate_continue",
        "migrate_continue foo",
        "migrate_continue setup",
        '"migrate_continue" setup',
        "migrate_continue active extra",
        "migrate_incoming",
        "migrate_incoming a b",
        "migrate_pause",
        "migrate_set_capability",
        "migrate_set_capability events  on",
        "migrate_set_capability events on\t",
        "migrate_set_capability events on off",
        "migrate_set_parameter x",
        "migrate_set_parameter downtime-limit 1 2",
        'migrate_set_parameter tls-creds "a b"',
        'migrate_set_parameter tls-hostname "x\\ny"',
        'migrate_set_parameter tls-authz ""',
        "info migrate_parameters",
    ]
    steps += [hmp(m, line.replace("\\t", "\t")) for line in lines]
    return steps + quit_(m)


SCENARIOS = {
    "hmp_idle": hmp_idle(),
    "hmp_parse": hmp_parse(),
}
