"""Migration parameters: 7.2 defaults, merged checks, quirks, -global; diffed with real QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from migemu.emulator.migration import capabilities as caps_mod
from migemu.emulator.migration import parameters as p
from migemu.qapi import validate
from migemu.qapi.errors import QMPError

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
TRANSCRIPT = Path("/work/shared/reference/transcripts/a_basics.jsonl")


def run_qemu(requests: list[dict], extra: list[str] = ()) -> tuple[list[dict], str, int]:
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
    replies = [r for r in replies if "id" in r]
    return replies, proc.stderr, proc.returncode


class Model:
    """Our side of a QMP session limited to parameters and capabilities."""

    def __init__(self) -> None:
        self.params = p.default_parameters()
        self.caps = caps_mod.default_capabilities()

    def execute(self, request: dict) -> dict:
        try:
            args = validate(request["execute"], request.get("arguments"))
            cmd = request["execute"]
            if cmd == "migrate-set-parameters":
                self.params = p.set_parameters(
                    self.params, args, zero_copy_send=self.caps["zero-copy-send"]
                )
                return {"return": {}}
            if cmd == "migrate-set-capabilities":
                self.caps = caps_mod.set_capabilities(
                    self.caps, args["capabilities"], migration_running=False, parameters=self.params
                )
                return {"return": {}}
            if cmd == "query-migrate-parameters":
                return {"return": p.query_parameters(self.params)}
            if cmd == "query-migrate-capabilities":
                return {"return": caps_mod.query_capabilities(self.caps)}
            raise AssertionError(cmd)
        except QMPError as err:
            return {"error": err.to_qobject()}


def msp(**kw) -> dict:
    return {
        "execute": "migrate-set-parameters",
        "arguments": {k.replace("_", "-"): v for k, v in kw.items()},
    }


def msc(*names: str, state: bool = True) -> dict:
    return {
        "execute": "migrate-set-capabilities",
        "arguments": {"capabilities": [{"capability": n, "state": state} for n in names]},
    }


QUERY = {"execute": "query-migrate-parameters"}

SCENARIOS: dict[str, list[dict]] = {
    "each_check": [
        msp(compress_level=10),
        msp(compress_threads=0),
        msp(decompress_threads=0),
        msp(throttle_trigger_threshold=0),
        msp(throttle_trigger_threshold=101),
        msp(cpu_throttle_initial=0),
        msp(cpu_throttle_initial=100),
        msp(cpu_throttle_increment=0),
        msp(downtime_limit=2000001),
        msp(downtime_limit=2000000),
        msp(downtime_limit=-1),
        msp(multifd_channels=0),
        msp(multifd_channels=255),
        msp(xbzrle_cache_size=4096),
        msp(xbzrle_cache_size=2048),
        msp(xbzrle_cache_size=12288),
        msp(xbzrle_cache_size=0),
        msp(max_cpu_throttle=10),
        msp(cpu_throttle_initial=50, max_cpu_throttle=40),
        msp(max_cpu_throttle=100),
        msp(announce_initial=100001),
        msp(announce_max=100001),
        msp(announce_rounds=1001),
        msp(announce_step=0),
        msp(announce_step=10001),
        msp(announce_step=10000, announce_rounds=1000, announce_max=100000),
        QUERY,
    ],
    "first_failure_wins_and_nothing_applies": [
        msp(compress_level=10, cpu_throttle_initial=0, multifd_channels=0),
        msp(multifd_channels=0, compress_threads=0),
        msp(max_bandwidth=1, announce_step=0),
        msp(max_bandwidth=-1, tls_creds="x", multifd_channels=7),
        QUERY,
    ],
    "zlib_zstd_levels_accepted_not_stored": [
        msp(multifd_zlib_level=10),
        msp(multifd_zstd_level=21),
        msp(multifd_zlib_level=9, multifd_zstd_level=0),
        msp(multifd_zlib_level=256),
        QUERY,
    ],
    "tls_null_and_strings": [
        msp(tls_creds="creds0", tls_hostname="host", tls_authz="authz0"),
        QUERY,
        msp(tls_creds=None, tls_hostname=None, tls_authz=None),
        QUERY,
    ],
    "block_bitmap_mapping": [
        QUERY,
        msp(block_bitmap_mapping=[{"node-name": "n", "alias": "a", "bitmaps": []}] * 2),
        msp(
            block_bitmap_mapping=[
                {"node-name": "n", "alias": "a", "bitmaps": []},
                {"node-name": "m", "alias": "a", "bitmaps": []},
            ]
        ),
        msp(block_bitmap_mapping=[{"node-name": "n", "alias": "1a", "bitmaps": []}]),
        msp(
            block_bitmap_mapping=[
                {
                    "node-name": "n",
                    "alias": "a",
                    "bitmaps": [{"name": "b", "alias": "x"}, {"name": "b", "alias": "y"}],
                }
            ]
        ),
        msp(
            block_bitmap_mapping=[
                {
                    "node-name": "n",
                    "alias": "a",
                    "bitmaps": [{"name": "b", "alias": "x"}, {"name": "c", "alias": "x"}],
                }
            ]
        ),
        msp(
            block_bitmap_mapping=[
                {"node-name": "n", "alias": "a", "bitmaps": [{"name": "b", "alias": "x" * 256}]}
            ]
        ),
        msp(
            block_bitmap_mapping=[
                {
                    "node-name": "n",
                    "alias": "a.b-c_1",
                    "bitmaps": [{"alias": "x y", "transform": {"persistent": True}, "name": "b"}],
                }
            ]
        ),
        QUERY,
        msp(block_bitmap_mapping=[]),
        QUERY,
    ],
    "zero_copy_send_rules": [
        msc("zero-copy-send"),
        msc("multifd", "zero-copy-send"),
        msp(multifd_compression="zlib"),
        msp(tls_creds="x"),
        msp(tls_creds=None, multifd_compression="none", multifd_channels=8),
        msc("zero-copy-send", state=False),
        msp(multifd_compression="zstd", tls_creds="c"),
        msc("zero-copy-send"),
        QUERY,
    ],
}


def test_defaults_match_recorded_qemu():
    for line in TRANSCRIPT.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("dir") == "s2c" and "multifd-channels" in json.dumps(rec.get("msg")):
            assert p.query_parameters(p.default_parameters()) == rec["msg"]["return"]
            return
    raise AssertionError("no query-migrate-parameters reply in the transcript")


def test_schema_order():
    assert list(p.default_parameters())[:4] == [
        "announce-initial", "announce-max", "announce-rounds", "announce-step",
    ]  # fmt: skip
    params = p.set_parameters(p.default_parameters(), {"block-bitmap-mapping": []})
    assert list(params)[-1] == "block-bitmap-mapping"
    assert list(p.query_parameters(params)) == list(p.PARAMETER_NAMES)


def test_failure_applies_nothing():
    current = p.default_parameters()
    with pytest.raises(QMPError) as err:
        p.set_parameters(current, {"max-bandwidth": 5, "multifd-channels": 0})
    assert err.value.desc == "Parameter 'multifd_channels' expects a value between 1 and 255"
    assert current == p.default_parameters()


def test_merged_check_uses_current_values():
    current = p.set_parameters(p.default_parameters(), {"cpu-throttle-initial": 60})
    with pytest.raises(QMPError, match="max_cpu_throttle"):
        p.set_parameters(current, {"max-cpu-throttle": 50})


def test_levels_over_qmp_are_ignored_but_global_applies():
    params = p.set_parameters(p.default_parameters(), {"multifd-zlib-level": 200})
    assert params["multifd-zlib-level"] == 1
    params = p.set_global(params, "multifd-zlib-level", "5")
    assert params["multifd-zlib-level"] == 5
    params = p.set_global(params, "multifd-zstd-level", "21")
    with pytest.raises(QMPError) as err:
        p.check_parameters(params)
    assert err.value.desc == "Parameter 'multifd_zstd_level' expects a value between 0 and 20"


def test_tls_null_stored_as_empty_string():
    params = p.set_parameters(p.default_parameters(), {"tls-creds": "a"})
    params = p.set_parameters(params, {"tls-creds": None})
    assert params["tls-creds"] == ""


@pytest.mark.parametrize(
    ("prop", "text", "expected"),
    [
        ("multifd-channels", "0x10", 16),
        ("multifd-channels", "010", 8),
        ("multifd-channels", " 4", 4),
        ("x-max-bandwidth", "1k", 1024),
        ("xbzrle-cache-size", "1.5M", 1572864),
        ("max-postcopy-bandwidth", "+5", 5),
        ("max-postcopy-bandwidth", "1.", 1),
        ("max-postcopy-bandwidth", "010", 10),
        ("max-postcopy-bandwidth", "1e", 2**60),
        ("max-postcopy-bandwidth", "0.5k", 512),
        ("max-postcopy-bandwidth", "15.9E", 18331451923248866944),
        ("x-downtime-limit", "+5", 5),
        ("x-downtime-limit", "0X10", 16),
        ("x-downtime-limit", "-1", 2**64 - 1),
        ("x-cpu-throttle-tailslow", "y", True),
        ("multifd-compression", "zstd", "zstd"),
        ("tls-creds", "abc", "abc"),
    ],
)
def test_global_values(prop, text, expected):
    target = p.MIGRATION_PROPERTIES[prop].target
    assert p.set_global(p.default_parameters(), prop, text)[target] == expected


SIZE_ERR = "Parameter '{}' expects a non-negative number below 2^64\n" + p.SIZE_HINT
RANGE_ERR = "Value '{}' is out of range for parameter '{}'"
GLOBAL_ERRORS = [
    ("multifd-zlib-level", "abc", "Parameter 'multifd-zlib-level' expects uint64"),
    ("multifd-zlib-level", "300", "Parameter 'multifd-zlib-level' expects uint8_t"),
    ("multifd-zlib-level", "-1", "Parameter 'multifd-zlib-level' expects uint8_t"),
    ("multifd-channels", "4 ", "Parameter 'multifd-channels' expects uint64"),
    ("x-checkpoint-delay", "-1", "Parameter 'x-checkpoint-delay' expects uint32_t"),
    ("x-downtime-limit", "abc", "Parameter 'x-downtime-limit' expects uint64"),
    ("xbzrle-cache-size", "abc", SIZE_ERR.format("xbzrle-cache-size")),
    ("x-max-bandwidth", "-1", SIZE_ERR.format("x-max-bandwidth")),
    ("multifd-compression", "lz4", "Parameter 'multifd-compression' does not accept value 'lz4'"),
    ("x-cpu-throttle-tailslow", "ON", "Parameter 'x-cpu-throttle-tailslow' expects 'on' or 'off'"),
    ("downtime-limit", "1", "Property 'migration.downtime-limit' not found"),
    ("max-bandwidth", "1k", "Property 'migration.max-bandwidth' not found"),
    ("foo", "1", "Property 'migration.foo' not found"),
    ("max-postcopy-bandwidth", "16E", RANGE_ERR.format("16E", "max-postcopy-bandwidth")),
    ("announce-max", str(2**64), RANGE_ERR.format(2**64, "announce-max")),
    ("max-postcopy-bandwidth", "1.5", SIZE_ERR.format("max-postcopy-bandwidth")),
    ("max-postcopy-bandwidth", "1kB", SIZE_ERR.format("max-postcopy-bandwidth")),
    ("max-postcopy-bandwidth", "-0", SIZE_ERR.format("max-postcopy-bandwidth")),
    ("max-postcopy-bandwidth", ".5k", SIZE_ERR.format("max-postcopy-bandwidth")),
    ("x-downtime-limit", "18446744073709551616", "Parameter 'x-downtime-limit' expects uint64"),
    ("multifd", "on", "Property 'migration.multifd' not found"),
    ("store-global-state", "maybe", "Parameter 'store-global-state' expects 'on' or 'off'"),
    ("x-clear-bitmap-shift", "256", "Parameter 'x-clear-bitmap-shift' expects uint8_t"),
]  # fmt: skip


@pytest.mark.parametrize(("prop", "text", "inner"), GLOBAL_ERRORS)
def test_global_errors(prop, text, inner):
    with pytest.raises(QMPError) as err:
        caps_mod.apply_global(p.default_parameters(), caps_mod.default_capabilities(), prop, text)
    assert err.value.desc == f"can't apply global migration.{prop}={text}: {inner}"


def _our_startup(globals_: list[tuple[str, str]]) -> tuple[str | None, dict]:
    params, caps = p.default_parameters(), caps_mod.default_capabilities()
    try:
        for prop, text in globals_:
            params, caps = caps_mod.apply_global(params, caps, prop, text)
        p.check_parameters(params)
        caps_mod.check_capabilities(caps_mod.default_capabilities(), caps, parameters=params)
    except QMPError as err:
        return err.desc, params
    return None, params


STARTUP_CASES = [
    [("multifd-zlib-level", "5"), ("multifd-zstd-level", "20")],
    [("multifd-zlib-level", "10")],
    [("multifd-channels", "0")],
    [("announce-step", "0"), ("multifd-channels", "0")],
    [("xbzrle-cache-size", "1k")],
    [("x-multifd", "on"), ("x-compress", "on")],
    [("x-zero-copy-send", "on")],
    [("x-multifd", "on"), ("x-zero-copy-send", "on"), ("multifd-compression", "zlib")],
    [("x-multifd", "on"), ("x-events", "yes"), ("store-global-state", "off")],
    [("x-background-snapshot", "on"), ("x-block", "on"), ("x-return-path", "on")],
    [("x-postcopy-preempt", "on")],
    [("max-postcopy-bandwidth", "+5"), ("announce-max", "1."), ("x-downtime-limit", "0X10")],
    [("max-postcopy-bandwidth", "15.9E"), ("xbzrle-cache-size", "0.5M")],
    *[[(prop, text)] for prop, text, _ in GLOBAL_ERRORS],
]


@needs_qemu
@pytest.mark.parametrize("globals_", STARTUP_CASES)
def test_startup_globals_match_real_qemu(globals_):
    extra = [arg for prop, text in globals_ for arg in ("-global", f"migration.{prop}={text}")]
    replies, stderr, rc = run_qemu([QUERY], extra)
    err, params = _our_startup(globals_)
    if err is None:
        assert rc == 0 and replies[0]["return"] == p.query_parameters(params)
    else:
        assert rc == 1
        assert stderr == "".join(
            f"qemu-system-x86_64: {line}\n" if i == 0 else f"{line}\n"
            for i, line in enumerate(err.split("\n"))
        )


@needs_qemu
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_matches_real_qemu(name):
    requests = SCENARIOS[name]
    real, _, _ = run_qemu(requests)
    model = Model()
    ours = [{**model.execute(r), "id": i} for i, r in enumerate(requests)]
    assert ours == real


def _random_requests(seed: int, count: int) -> list[dict]:
    """Random migrate-set-parameters calls: right and wrong types, edges, unknown members."""
    import random

    rng = random.Random(seed)
    names = list(p.PARAMETER_NAMES[:-1]) + ["bogus", "x-bogus"]
    values = [
        0, 1, 2, 5, 9, 10, 20, 21, 99, 100, 101, 255, 256, 1000, 1001, 4096, 65536, 100000,
        100001, 2000000, 2000001, 2**32, 2**63, 2**64 - 1, -1, -256, 1.0, 0.5, True, False,
        None, "", "zlib", "zstd", "none", "lz4", "tls0", [], {},
    ]  # fmt: skip
    out = []
    for _ in range(count):
        k = rng.randint(1, 4)
        out.append(msp(**{n.replace("-", "_"): rng.choice(values) for n in rng.sample(names, k)}))
        if rng.random() < 0.1:
            out.append(QUERY)
    out.append(QUERY)
    return out


@needs_qemu
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_requests_match_real_qemu(seed):
    requests = _random_requests(seed, 250)
    real, _, _ = run_qemu(requests)
    model = Model()
    ours = [{**model.execute(r), "id": i} for i, r in enumerate(requests)]
    assert ours == real
