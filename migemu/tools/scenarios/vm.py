"""Scenarios for the VM around migration: run state, identity, incoming and failed migrate.

Run-state commands with their STOP/RESUME events, ``-name``/``-uuid``/``-S``, a ``-incoming
defer`` destination (``migrate-incoming`` on a unix socket, so ``socket-address`` holds a
placeholder path rather than a random port), and the synchronous ``migrate`` errors. No real
migration runs here, so nothing but event timestamps depends on timing.
"""

from __future__ import annotations

from migemu.tools.scenarios.steps import Step, connect, qmp, quit_, request, send, session

QUIET_S = 0.2


def vm_runstate() -> list[Step]:
    n, m = "vm_runstate", "src"
    steps = session(n, m)
    steps += [
        qmp(m, "query-status"),
        qmp(m, "query-name"),
        qmp(m, "query-uuid"),
        qmp(m, "query-version"),
        qmp(m, "query-status", {"foo": 1}),
        qmp(m, "stop", events=1),
        qmp(m, "query-status"),
        send(m, request("stop"), quiet=QUIET_S),
        qmp(m, "query-status"),
        qmp(m, "cont", events=1),
        qmp(m, "query-status"),
        send(m, request("cont"), quiet=QUIET_S),
        send(m, request("stop", id="s"), events=1),
        send(m, request("cont", id="c"), events=1),
        qmp(m, "query-status"),
    ]
    return steps + quit_(m)


def vm_identity() -> list[Step]:
    n, m = "vm_identity", "src"
    steps = session(n, m, "-name", "guest-a", "-uuid", "12345678-9ABC-def0-1234-56789abcdef0", "-S")
    steps += [
        qmp(m, "query-name"),
        qmp(m, "query-uuid"),
        qmp(m, "query-status"),
        send(m, request("stop"), quiet=QUIET_S),
        qmp(m, "query-status"),
        qmp(m, "cont", events=1),
        qmp(m, "query-status"),
    ]
    return steps + quit_(m)


def vm_name_options() -> list[Step]:
    n, m = "vm_name_options", "src"
    steps = session(n, m, "-name", "guest=vm,,one,debug-threads=on")
    steps += [qmp(m, "query-name"), qmp(m, "query-uuid"), qmp(m, "query-status")]
    return steps + quit_(m)


def vm_incoming_defer() -> list[Step]:
    n, m = "vm_incoming_defer", "dst"
    uri = f"unix:SOCK_{n}-mig"
    steps = session(n, m, "-incoming", "defer", share=True)
    steps += [
        qmp(m, "query-status"),
        qmp(m, "query-migrate"),
        qmp(m, "migrate", {"uri": "unix:SOCK_vm_incoming_defer-nowhere"}),
        qmp(m, "migrate-incoming"),
        qmp(m, "migrate-incoming", {"uri": 1}),
        qmp(m, "migrate-incoming", {"uri": "foo:bar"}),
        qmp(m, "query-migrate"),
        qmp(m, "migrate-incoming", {"uri": uri}, events=1),
        qmp(m, "query-migrate"),
        qmp(m, "query-status"),
        qmp(m, "migrate-incoming", {"uri": uri}),
        qmp(m, "migrate-incoming", {"uri": "foo:bar"}),
        qmp(m, "migrate", {"uri": "foo:bar"}),
        qmp(
            m,
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "multifd", "state": True}]},
        ),
        qmp(m, "migrate-set-parameters", {"multifd-channels": 4}),
        qmp(m, "query-migrate"),
        send(m, request("cont"), quiet=QUIET_S),
        qmp(m, "query-status"),
    ]
    return steps + quit_(m)


def vm_migrate_errors() -> list[Step]:
    n, m = "vm_migrate_errors", "src"
    steps = session(n, m)
    steps += [
        qmp(m, "migrate-incoming", {"uri": f"unix:SOCK_{n}-in"}),
        qmp(m, "migrate"),
        qmp(m, "migrate", {"uri": 1}),
        qmp(m, "migrate", {"uri": "unix:x", "foo": 1}),
        qmp(m, "query-migrate"),
        qmp(m, "migrate", {"uri": "foo:bar"}),
        qmp(m, "query-migrate"),
        qmp(m, "query-status"),
        qmp(m, "migrate", {"uri": ""}),
        qmp(m, "query-migrate"),
        qmp(m, "migrate", {"uri": "unix:x", "resume": True}),
        qmp(m, "migrate-continue", {"state": "pre-switchover"}),
        qmp(m, "migrate-continue", {"state": "bogus"}),
        qmp(m, "migrate-pause"),
        qmp(m, "migrate_cancel"),
        qmp(m, "query-migrate"),
        qmp(
            m,
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events", "state": True}]},
        ),
        send(m, request("migrate", {"uri": "foo:bar"}), quiet=QUIET_S),
        qmp(m, "query-migrate"),
        send(m, request("migrate", {"uri": "tcp:"}), quiet=QUIET_S),
        qmp(m, "query-migrate"),
        qmp(m, "query-status"),
    ]
    return steps + quit_(m)


def vm_reconnect() -> list[Step]:
    """Negotiation is per connection; the VM state outlives it."""
    n, m = "vm_reconnect", "src"
    steps = session(n, m)
    steps += [
        qmp(m, "stop", events=1),
        {"op": "close", "mon": m},
        connect(m),
        qmp(m, "query-status"),
        qmp(m, "qmp_capabilities"),
        qmp(m, "query-status"),
        qmp(m, "cont", events=1),
        {"op": "close", "mon": m},
        connect(m),
        qmp(m, "qmp_capabilities", {"enable": ["oob"]}),
        send(m, '{"exec-oob": "migrate-pause", "id": 1}\n'),
        {"op": "close", "mon": m},
        connect(m),
        qmp(m, "qmp_capabilities"),
        send(m, '{"exec-oob": "migrate-pause", "id": 2}\n'),
        qmp(m, "query-status"),
    ]
    return steps + quit_(m)


def vm_incoming_cmdline() -> list[Step]:
    """``-incoming URI`` on the command line: the setup event fires before any client."""
    n, m = "vm_incoming_cmdline", "dst"
    steps = session(n, m, "-incoming", f"unix:SOCK_{n}-mig", share=True)
    steps += [
        qmp(m, "query-status"),
        qmp(m, "query-migrate"),
        qmp(m, "migrate-incoming", {"uri": f"unix:SOCK_{n}-other"}),
        qmp(m, "migrate", {"uri": "foo:bar"}),
        qmp(m, "query-migrate-capabilities"),
    ]
    return steps + quit_(m)


def vm_removed_commands() -> list[Step]:
    """Commands a pre-6.0 client may still try, and quit before negotiation."""
    n, m = "vm_removed_commands", "src"
    steps = session(n, m)
    for command in (
        "migrate_set_speed",
        "migrate_set_downtime",
        "migrate-set-cache-size",
        "query-migrate-cache-size",
        "migrate-set-parameters-x",
        "query_migrate",
    ):
        steps.append(qmp(m, command, id=command))
    steps += [
        qmp(m, "migrate_cancel"),
        qmp(m, "query-migrate"),
        qmp(m, "quit", {"force": True}),
    ]
    return steps + quit_(m)


def vm_incoming_runstate() -> list[Step]:
    """stop/cont on destinations waiting for a migration, with and without -S."""
    n = "vm_incoming_runstate"
    steps: list[Step] = []
    for mon, extra in (("dst", ()), ("dst2", ("-S",))):
        steps += session(n, mon, *extra, "-incoming", "defer", share=True)
        steps += [
            qmp(mon, "query-status"),
            send(mon, request("stop"), quiet=QUIET_S),
            qmp(mon, "query-status"),
            send(mon, request("cont"), quiet=QUIET_S),
            qmp(mon, "query-status"),
            send(mon, request("stop"), quiet=QUIET_S),
            qmp(mon, "query-status"),
            *quit_(mon),
        ]
    return steps


# URIs that fail while the command runs (parsing, fd lookup), so the reply, the events and
# error-desc are deterministic. Connection and DNS failures are asynchronous: left out.
SYNC_BAD_URIS = [
    "fd:x",
    "fd:",
    "tcp:",
    "tcp:127.0.0.1",
    "tcp:[::1",
    "tcp::",
    "unix:",
    "vsock:1",
    "unix",
    "",
    "exec",
    "UNIX:x",
]


def vm_bad_uris() -> list[Step]:
    n, dst, src = "vm_bad_uris", "dst", "src"
    events_on = {"capabilities": [{"capability": "events", "state": True}]}
    steps = session(n, dst, "-incoming", "defer", share=True)
    steps += [qmp(dst, "migrate-incoming", {"uri": uri}) for uri in SYNC_BAD_URIS]
    steps += [
        qmp(dst, "query-migrate"),
        qmp(dst, "migrate-set-capabilities", events_on),
        qmp(dst, "migrate-incoming", {"uri": "tcp:"}),
        qmp(dst, "migrate-incoming", {"uri": f"unix:SOCK_{n}-mig"}),
        qmp(dst, "query-migrate"),
        *quit_(dst),
    ]
    steps += session(n, src)
    steps.append(qmp(src, "migrate-set-capabilities", events_on))
    for uri in SYNC_BAD_URIS:
        steps += [qmp(src, "migrate", {"uri": uri}), qmp(src, "query-migrate")]
    steps.append(qmp(src, "query-status"))
    return steps + quit_(src)


SCENARIOS = {
    "vm_runstate": vm_runstate(),
    "vm_identity": vm_identity(),
    "vm_name_options": vm_name_options(),
    "vm_incoming_defer": vm_incoming_defer(),
    "vm_migrate_errors": vm_migrate_errors(),
    "vm_reconnect": vm_reconnect(),
    "vm_incoming_cmdline": vm_incoming_cmdline(),
    "vm_removed_commands": vm_removed_commands(),
    "vm_bad_uris": vm_bad_uris(),
    "vm_incoming_runstate": vm_incoming_runstate(),
}
