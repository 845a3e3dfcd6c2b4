"""Migration capabilities: 7.2's order, defaults and migrate_caps_check; diffed with real QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from migemu.emulator.migration import capabilities as c
from migemu.emulator.migration import parameters as p
from migemu.qapi import validate
from migemu.qapi.errors import QMPError

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
TRANSCRIPT = Path("/work/shared/reference/transcripts/a_basics.jsonl")


def run_qemu(requests: list[dict], extra: list[str] = ()) -> list[dict]:
    """Requests to a fresh QEMU over -qmp stdio; it quits at the end (or is killed on timeout)."""
    lines = [json.dumps({"execute": "qmp_capabilities"})]
    lines += [json.dumps({**r, "id": i}) for i, r in enumerate(requests)]
    lines.append(json.dumps({"execute": "quit"}))
    proc = subprocess.run(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", "stdio", *extra],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    replies = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return [r for r in replies if "id" in r]


class Model:
    """Our side of a session: capabilities, parameters, and the incoming URI's channel rule."""

    def __init__(self, incoming: bool = False) -> None:
        self.caps = c.default_capabilities()
        self.params = p.default_parameters()
        self.incoming = incoming
        self.multi_channel_allowed = True

    def execute(self, request: dict) -> dict:
        cmd = request["execute"]
        try:
            args = validate(cmd, request.get("arguments"))
            if cmd == "migrate-set-capabilities":
                self.caps = c.set_capabilities(
                    self.caps,
                    args["capabilities"],
                    migration_running=False,
                    incoming=self.incoming,
                    multi_channel_allowed=self.multi_channel_allowed,
                    parameters=self.params,
                )
                return {"return": {}}
            if cmd == "migrate-set-parameters":
                self.params = p.set_parameters(
                    self.params, args, zero_copy_send=self.caps["zero-copy-send"]
                )
                return {"return": {}}
            if cmd == "migrate-incoming":
                scheme = args["uri"].split(":", 1)[0]
                self.multi_channel_allowed = scheme in ("tcp", "unix", "vsock")
                return {"return": {}}
            if cmd == "query-migrate-capabilities":
                return {"return": c.query_capabilities(self.caps)}
            raise AssertionError(cmd)
        except QMPError as err:
            return {"error": err.to_qobject()}


def msc(*names: str, state: bool = True) -> dict:
    return {
        "execute": "migrate-set-capabilities",
        "arguments": {"capabilities": [{"capability": n, "state": state} for n in names]},
    }


QUERY = {"execute": "query-migrate-capabilities"}
OTHERS = [n for n in c.CAPABILITY_NAMES if n not in ("background-snapshot", "x-ignore-shared")]

SCENARIOS: dict[str, list[dict]] = {
    "multifd_compress": [msc("multifd", "compress"), msc("compress"), msc("multifd"), QUERY],
    "later_entry_wins": [msc("events"), msc("events", state=False), QUERY],
    "zero_copy": [
        msc("zero-copy-send"),
        msc("zero-copy-send", "multifd"),
        msc("xbzrle"),
        msc("compress"),
        QUERY,
    ],
    "postcopy_preempt": [
        msc("postcopy-preempt"),
        msc("postcopy-preempt", "postcopy-ram", "compress"),
        msc("postcopy-preempt", "postcopy-ram"),
        msc("compress"),
        QUERY,
    ],
    "postcopy_ignore_shared": [
        msc("x-ignore-shared", "postcopy-ram"),
        msc("x-ignore-shared"),
        msc("postcopy-ram"),
        QUERY,
    ],
    # every incompatible capability at once: the error names the first one 7.2 checks
    "background_snapshot_order": [
        msc(*OTHERS[i:], "background-snapshot") for i in range(len(OTHERS))
    ]
    + [msc("background-snapshot", "x-ignore-shared", "block", "events", "zero-blocks"), QUERY],
    "everything_on": [msc(*c.CAPABILITY_NAMES), msc(*OTHERS), QUERY],
}


def test_defaults_match_recorded_qemu():
    for line in TRANSCRIPT.read_text().splitlines():
        rec = json.loads(line)
        ret = rec.get("msg", {}).get("return") if rec.get("dir") == "s2c" else None
        if isinstance(ret, list) and ret and "capability" in ret[0]:
            assert c.query_capabilities(c.default_capabilities()) == ret
            return
    raise AssertionError("no query-migrate-capabilities reply in the transcript")


def test_enum_matches_schema():
    from migemu.qapi.schema import load_schema

    assert c.CAPABILITY_NAMES == load_schema().types["MigrationCapability"].values


def test_running_migration_refuses_any_change():
    with pytest.raises(QMPError) as err:
        c.set_capabilities(c.default_capabilities(), [], migration_running=True)
    assert err.value.desc == "There's a migration process in progress"


def test_failure_applies_nothing():
    current = c.default_capabilities()
    with pytest.raises(QMPError, match="Multifd is not compatible with compress"):
        c.set_capabilities(
            current,
            [{"capability": "events", "state": True}, {"capability": "multifd", "state": True},
             {"capability": "compress", "state": True}],
            migration_running=False,
        )  # fmt: skip
    assert current == c.default_capabilities()


def test_zero_copy_sees_parameters():
    caps = c.set_capabilities(
        c.default_capabilities(),
        [{"capability": "multifd", "state": True}],
        migration_running=False,
    )
    for params in ({"multifd-compression": "zstd"}, {"tls-creds": "x"}):
        with pytest.raises(QMPError, match="Zero copy only available"):
            c.set_capabilities(
                caps,
                [{"capability": "zero-copy-send", "state": True}],
                migration_running=False,
                parameters={**p.default_parameters(), **params},
            )


def test_host_support():
    req = [{"capability": "postcopy-ram", "state": True}]
    no_uffd = c.HostSupport(postcopy_ram=False)
    # the host is probed only on a destination
    c.set_capabilities(c.default_capabilities(), req, migration_running=False, host=no_uffd)
    with pytest.raises(QMPError, match="^Postcopy is not supported$"):
        c.set_capabilities(
            c.default_capabilities(), req, migration_running=False, incoming=True, host=no_uffd
        )
    bg = [{"capability": "background-snapshot", "state": True}]
    with pytest.raises(QMPError, match="not supported by host kernel"):
        c.set_capabilities(
            c.default_capabilities(),
            bg,
            migration_running=False,
            host=c.HostSupport(write_tracking=False),
        )


def test_global_capability_properties():
    caps = c.set_global(c.default_capabilities(), "x-multifd", "on")
    assert caps["multifd"] is True
    with pytest.raises(QMPError) as err:
        c.set_global(caps, "x-multifd", "maybe")
    assert err.value.desc == (
        "can't apply global migration.x-multifd=maybe: Parameter 'x-multifd' expects 'on' or 'off'"
    )
    with pytest.raises(QMPError) as err:
        c.set_global(caps, "multifd", "on")
    assert err.value.desc == (
        "can't apply global migration.multifd=on: Property 'migration.multifd' not found"
    )


@needs_qemu
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_matches_real_qemu(name):
    requests = SCENARIOS[name]
    model = Model()
    ours = [{**model.execute(r), "id": i} for i, r in enumerate(requests)]
    assert ours == run_qemu(requests)


@needs_qemu
def test_destination_multifd_needs_multi_channel_uri():
    # "exec:sleep 1" keeps the incoming side waiting; the child exits on its own.
    requests = [
        msc("multifd"),
        msc("multifd", state=False),
        {"execute": "migrate-incoming", "arguments": {"uri": "exec:sleep 1"}},
        msc("multifd"),
        msc("events"),
        QUERY,
    ]
    model = Model(incoming=True)
    ours = [{**model.execute(r), "id": i} for i, r in enumerate(requests)]
    assert ours == run_qemu(requests, ["-incoming", "defer"])
    assert ours[3]["error"]["desc"] == "multifd is not supported by current protocol"


def _random_requests(seed: int, count: int) -> list[dict]:
    """migrate-set-capabilities with random (often malformed) entries."""
    import random

    rng = random.Random(seed)
    names = [*c.CAPABILITY_NAMES, "bogus", 7, None]
    states = [True, False, True, False, 1, "on", None]
    out: list[dict] = []
    for _ in range(count):
        entries: list[object] = []
        for _ in range(rng.randint(0, 4)):
            entry: dict[str, object] = {}
            if rng.random() < 0.95:
                entry["capability"] = rng.choice(names)
            if rng.random() < 0.95:
                entry["state"] = rng.choice(states)
            if rng.random() < 0.05:
                entry["extra"] = 1
            entries.append(entry if rng.random() < 0.97 else rng.choice([1, "x", []]))
        args: dict[str, object] = {"capabilities": entries}
        if rng.random() < 0.05:
            args["junk"] = True
        out.append({"execute": "migrate-set-capabilities", "arguments": args})
        if rng.random() < 0.1:
            out.append(QUERY)
    out.append(QUERY)
    return out


@needs_qemu
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_requests_match_real_qemu(seed):
    requests = _random_requests(seed, 300)
    model = Model()
    ours = [{**model.execute(r), "id": i} for i, r in enumerate(requests)]
    assert ours == run_qemu(requests)
