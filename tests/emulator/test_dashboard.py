"""The dashboard (emulator/dashboard): options, model, /metrics, the JSON API, writes, WebSocket.

The HTTP tests drive the aiohttp app through aiohttp's test client, against an in-process
``Machine`` (through ``MachineSource``, as ``-dashboard`` does) or a scripted fake source for
the migration's life cycle. Waiting is on messages or on conditions polled with a deadline.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import re
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from migemu.emulator.cmdline import parse_command_line
from migemu.emulator.dashboard import (
    DashboardOptionError,
    DashboardOptions,
    MachineSource,
    QueryError,
    dashboard_options,
    parse_dashboard_option,
)
from migemu.emulator.dashboard.app import METRICS_CONTENT_TYPE, create_app, create_multi_app
from migemu.emulator.dashboard.hub import Hub
from migemu.emulator.dashboard.model import DashboardModel, render_metrics
from migemu.emulator.dashboard.provider import services_for
from migemu.emulator.dashboard.service import DashboardServer
from migemu.emulator.machine import Machine, MachineOptions
from migemu.emulator.startup import StartupError

DEADLINE_S = 10.0
TOKEN = "s3cret-token"


async def until(predicate, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.002)


# -- options ---------------------------------------------------------------------------------


def test_option_forms():
    assert parse_dashboard_option("127.0.0.1:8080") == DashboardOptions("127.0.0.1", 8080)
    assert parse_dashboard_option(":0") == DashboardOptions("127.0.0.1", 0)
    opts = parse_dashboard_option("[::1]:0,writable=on,url-file=/tmp/u")
    assert opts == DashboardOptions("[::1]", 0, True, "/tmp/u") and opts.loopback
    assert parse_dashboard_option("127.0.0.1:1,writable=off").writable is False
    assert not parse_dashboard_option("0.0.0.0:1").loopback
    assert dashboard_options(("127.0.0.1", 9)) == DashboardOptions("127.0.0.1", 9)
    assert dashboard_options(None) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "error parsing address 'nope'"),
        ("127.0.0.1:99999", "error parsing address '127.0.0.1:99999'"),
        ("127.0.0.1:0,writable=maybe", "Parameter 'writable' expects 'on' or 'off'"),
        ("127.0.0.1:0,colour=red", "Invalid parameter 'colour'"),
    ],
)
def test_option_errors(text, message):
    with pytest.raises(DashboardOptionError, match=re.escape(message)):
        parse_dashboard_option(text)


def test_provider_builds_a_server_only_when_asked():
    machine = Machine(MachineOptions())
    try:
        assert services_for(parse_command_line(["migemu"]), machine) == []
        config = parse_command_line(["migemu", "-dashboard", "127.0.0.1:0"])
        (server,) = services_for(config, machine)
        assert isinstance(server, DashboardServer) and not server.token
        with pytest.raises(StartupError, match="Invalid parameter"):

            class Config:
                dashboard = "127.0.0.1:0,bogus=1"
                prog_name = "migemu"

            services_for(Config(), machine)  # type: ignore[arg-type]
    finally:
        machine.close()


# -- model and metrics -----------------------------------------------------------------------

METRIC_LINE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>([a-zA-Z_]\w*="([^"\\\n]|\\.)*",?)*)\})?'
    r" (?P<value>-?[0-9.e+-]+|NaN|[+-]Inf)$"
)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format 0.0.4, strictly: every sample after its HELP and TYPE."""
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter") and name not in typed, line
            typed[name] = kind
            continue
        m = METRIC_LINE.match(line)
        assert m, f"bad metric line {line!r}"
        assert m["name"] in typed, f"{m['name']} has no TYPE"
        if typed[m["name"]] == "counter":
            assert m["name"].endswith("_total")
        key = m["name"] + (f"{{{m['labels']}}}" if m["labels"] else "")
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(m["value"])
    return samples


def migrate_info(status: str, remaining: int = 0, mbps: float = 0.0) -> dict[str, Any]:
    ram = {"transferred": 4096, "remaining": remaining, "total": 1 << 20, "mbps": mbps}
    return {"status": status, "total-time": 12, "setup-time": 1, "ram": ram}


def test_model_chart_series():
    model = DashboardModel()
    assert model.record_migration({}, 1.0) is None and not model.active
    assert model.record_migration(migrate_info("setup"), 2.0) is not None
    model.record_migration(migrate_info("active", 100, 8.5), 3.0)
    last = model.record_migration(migrate_info("completed", 0, 9.0), 4.0)
    assert last == {
        "t": 4.0,
        "status": "completed",
        "mbps": 9.0,
        "remaining": 0,
        "transferred": 4096,
        "total": 1 << 20,
    }
    assert model.record_migration(migrate_info("completed"), 5.0) is None  # no longer moving
    assert [s["t"] for s in model.samples] == [2.0, 3.0, 4.0] and model.migrations_seen == 1
    model.record_migration(migrate_info("setup"), 9.0)  # the next migration: a new chart
    assert [s["t"] for s in model.samples] == [9.0] and model.migrations_seen == 2


def test_metrics_text():
    model = DashboardModel()
    model.status = {"running": False, "singlestep": False, "status": "postmigrate"}
    model.parameters = {"multifd-channels": 4, "tls-creds": "", "max-bandwidth": 1 << 27}
    model.capabilities = [{"capability": "multifd", "state": True}]
    model.record_migration(migrate_info("active", 100, 8.5), 1.0)
    model.record_migration(migrate_info("completed", 0, 9.5) | {"downtime": 3}, 2.0)
    model.record_event({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}})
    model.record_event({"event": 'we"ird\\', "timestamp": {"seconds": 1, "microseconds": 0}})
    samples = parse_metrics(render_metrics(model))
    assert samples["migemu_vm_running"] == 0
    assert samples['migemu_vm_status{status="postmigrate"}'] == 1
    assert samples['migemu_migration_status{status="completed"}'] == 1
    assert samples["migemu_migration_active"] == 0
    assert samples["migemu_migration_ram_transferred_bytes_total"] == 4096
    assert samples["migemu_migration_ram_mbps"] == 9.5
    assert samples["migemu_migration_ram_total_bytes"] == 1 << 20
    assert samples["migemu_migration_downtime_ms"] == 3
    assert samples['migemu_migration_parameter{parameter="multifd-channels"}'] == 4
    assert 'migemu_migration_parameter{parameter="tls-creds"}' not in samples
    assert samples['migemu_migration_capability{capability="multifd"}'] == 1
    assert samples["migemu_migration_starts_total"] == 1
    assert samples['migemu_events_total{event="STOP"}'] == 1
    assert samples['migemu_events_total{event="we\\"ird\\\\"}'] == 1


# -- the app against a machine ---------------------------------------------------------------


@pytest.fixture
async def machine():
    m = Machine(MachineOptions(name="vm-under-test"))
    yield m
    m.close()


async def serve(hub: Hub, token: str = "") -> TestClient:
    await hub.start()
    client = TestClient(TestServer(create_app(hub, token=token)))
    await client.start_server()
    return client


@pytest.fixture
async def read_only(machine):
    hub = Hub(MachineSource(machine))
    client = await serve(hub)
    yield client
    await client.close()
    await hub.close()


@pytest.fixture
async def writable(machine):
    hub = Hub(MachineSource(machine))
    client = await serve(hub, TOKEN)
    yield client
    await client.close()
    await hub.close()


async def test_json_api_mirrors_qmp(read_only, machine):
    run = machine.dispatcher.execute
    for path, command in [
        ("/api/status", "query-status"),
        ("/api/migration", "query-migrate"),
        ("/api/parameters", "query-migrate-parameters"),
        ("/api/capabilities", "query-migrate-capabilities"),
    ]:
        resp = await read_only.get(path)
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == run(command), path
    run("migrate-set-parameters", {"multifd-channels": 7})  # no event: the API asks afresh
    assert (await (await read_only.get("/api/parameters")).json())["multifd-channels"] == 7
    run("stop")
    events = await (await read_only.get("/api/events")).json()
    assert [e["event"] for e in events] == ["STOP"]
    snapshot = await (await read_only.get("/api/snapshot")).json()
    assert snapshot["writable"] is False
    assert snapshot["identity"]["name"] == "vm-under-test"
    assert snapshot["identity"]["version"]["qemu"] == {"major": 7, "minor": 2, "micro": 22}


async def test_page_and_assets(read_only):
    resp = await read_only.get("/")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert 'id="migration-status"' in text and 'id="chart"' in text
    assert "http" not in text.replace("http-equiv", "")  # nothing from elsewhere
    for path, kind in [("/app.js", "text/javascript"), ("/style.css", "text/css")]:
        resp = await read_only.get(path)
        assert resp.status == 200 and resp.content_type == kind


async def test_metrics_endpoint(read_only, machine):
    machine.dispatcher.execute("stop")
    resp = await read_only.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == METRICS_CONTENT_TYPE
    samples = parse_metrics(await resp.text())
    assert samples['migemu_vm_status{status="paused"}'] == 1
    assert samples['migemu_migration_status{status="none"}'] == 1
    assert samples['migemu_events_total{event="STOP"}'] == 1
    assert samples['migemu_migration_parameter{parameter="multifd-channels"}'] == 2


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_read_only_refuses_writes(read_only, machine, method):
    for path in ("/api/command/stop", "/api/status", "/"):
        resp = await read_only.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 405, path
        assert "read-only" in (await resp.json())["error"]
    assert machine.dispatcher.execute("query-status")["status"] == "running"


async def test_foreign_host_and_origin_refused(read_only):
    resp = await read_only.get("/api/status", headers={"Host": "attacker.example:80"})
    assert resp.status == 403
    resp = await read_only.get("/api/status", headers={"Origin": "http://attacker.example"})
    assert resp.status == 403
    resp = await read_only.get("/api/status", headers={"Host": "localhost:1234"})
    assert resp.status == 200


async def test_writes_need_the_token(writable, machine):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = await writable.post("/api/command/stop", headers=headers)
        assert resp.status == 403
    assert machine.dispatcher.execute("query-status")["status"] == "running"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await writable.post("/api/command/stop", headers=auth)
    assert resp.status == 200 and await resp.json() == {"return": {}}
    assert machine.dispatcher.execute("query-status")["status"] == "paused"
    resp = await writable.post("/api/command/quit", headers=auth)
    assert resp.status == 404
    resp = await writable.post("/api/command/migrate", headers=auth, data=b"[1]")
    assert resp.status == 400
    resp = await writable.post("/api/command/migrate", headers=auth, json={"uri": "bogus:x"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["class"] == "GenericError"
    snapshot = await (await writable.get("/api/snapshot")).json()
    assert snapshot["writable"] is True


async def test_websocket_pushes_events(read_only, machine):
    async with read_only.ws_connect("/ws") as ws:
        snapshot = await ws.receive_json(timeout=DEADLINE_S)
        assert snapshot["type"] == "snapshot" and snapshot["status"]["status"] == "running"
        # from another thread, as migration threads emit
        await asyncio.to_thread(machine.dispatcher.execute, "stop")
        seen: dict[str, Any] = {}  # the status may be re-read before the event hops over
        while not {"event", "status"} <= seen.keys():
            msg = await ws.receive_json(timeout=DEADLINE_S)
            seen[msg["type"]] = msg
        assert seen["event"]["event"]["event"] == "STOP"
        assert seen["status"]["status"]["status"] == "paused"


# -- the hub over a scripted source ----------------------------------------------------------


class FakeSource:
    """A QEMU whose query-migrate answer the test sets; events go to subscribers."""

    label = "fake"

    def __init__(self, events_cap: bool = True) -> None:
        self.migration: dict[str, Any] = {}
        self.calls: list[str] = []
        self.callbacks: list[Any] = []
        self.caps = [{"capability": "events", "state": events_cap}]

    async def query(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.calls.append(command)
        answers = {
            "query-status": {"running": True, "singlestep": False, "status": "running"},
            "query-migrate": self.migration,
            "query-migrate-parameters": {"multifd-channels": 2},
            "query-migrate-capabilities": self.caps,
            "query-version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
        }
        if command not in answers:
            raise QueryError(f"The command {command} has not been found", "CommandNotFound")
        return answers[command]

    def subscribe(self, callback):
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def emit(self, name: str, data: dict[str, Any]) -> None:
        event = {"event": name, "data": data, "timestamp": {"seconds": 0, "microseconds": 0}}
        for callback in list(self.callbacks):
            callback(event)


async def test_hub_polls_only_while_active():
    source = FakeSource()
    hub = Hub(source, poll_interval_s=0.005, idle_poll_s=60.0)
    await hub.start()
    try:
        sub = hub.add_subscriber()
        assert (await sub.queue.get())["type"] == "snapshot"
        await until(lambda: hub.waiting == math.inf)  # idle, events on: waits for events only
        idle_queries = hub.queries
        source.migration = migrate_info("setup")
        source.emit("MIGRATION", {"status": "setup"})
        source.migration = migrate_info("active", 1000, 800.0)
        await until(lambda: hub.queries >= idle_queries + 5)  # polling while active
        assert hub.waiting in (None, 0.005)
        source.migration = migrate_info("completed", 0, 900.0)
        source.emit("MIGRATION", {"status": "completed"})
        await until(lambda: hub.waiting == math.inf)
        done = hub.queries
        assert hub.model.migration_status == "completed"
        samples = list(hub.model.samples)
        assert len(samples) >= 3 and samples[-1]["status"] == "completed"
        for _ in range(20):
            await asyncio.sleep(0)
        assert hub.queries == done  # idle again: nothing polled
        messages = []
        while not sub.queue.empty():
            messages.append(await sub.queue.get())
        assert {m["type"] for m in messages} == {"event", "migration"}
        assert source.calls.count("query-migrate-parameters") == 3  # start, page, setup
        points = [m["sample"] for m in messages if m["type"] == "migration" and m["sample"]]
        assert points == samples
    finally:
        await hub.close()


async def test_hub_checks_slowly_when_events_are_off():
    source = FakeSource(events_cap=False)
    hub = Hub(source, poll_interval_s=0.005, idle_poll_s=0.01)
    await hub.start()
    try:
        await until(lambda: hub.waiting == 0.01)
        source.migration = migrate_info("active", 10, 1.0)  # no MIGRATION event comes
        await until(lambda: hub.model.active)
    finally:
        await hub.close()


async def test_multi_instance_app():
    hubs = [Hub(FakeSource()), Hub(FakeSource())]
    for hub in hubs:
        await hub.start()
    client = TestClient(TestServer(create_multi_app(hubs)))
    await client.start_server()
    try:
        text = await (await client.get("/")).text()
        assert 'href="1/"' in text and 'href="2/"' in text
        assert (await client.get("/2/api/status")).status == 200
        assert (await client.post("/2/api/command/stop")).status == 405
        resp = await client.get("/1/api/status", headers={"Host": "evil.example"})
        assert resp.status == 403
    finally:
        await client.close()
        for hub in hubs:
            await hub.close()


# -- the server: listening, url-file, token on stderr ----------------------------------------


async def test_server_url_file_and_token(machine, tmp_path):
    url_file = tmp_path / "url"
    err = io.StringIO()
    options = DashboardOptions("127.0.0.1", 0, writable=True, url_file=str(url_file))
    server = DashboardServer([MachineSource(machine)], options, stderr=err)
    await server.start()
    try:
        url = url_file.read_text().strip()
        assert url == server.url and url == f"http://127.0.0.1:{server.port}/"
        assert os.stat(url_file).st_mode & 0o777 == 0o600
        line = err.getvalue()
        assert line == f"migemu: dashboard (writable) at {url}#token={server.token}\n"
        async with aiohttp.ClientSession() as session:
            auth = {"Authorization": f"Bearer {server.token}"}
            async with session.post(url + "api/command/stop", headers=auth) as resp:
                assert resp.status == 200
            async with session.get(url + "api/status") as resp:
                assert (await resp.json())["status"] == "paused"
    finally:
        await server.close()
    assert not url_file.exists()


async def test_server_is_quiet_unless_needed(machine, tmp_path):
    err = io.StringIO()
    server = DashboardServer([MachineSource(machine)], DashboardOptions(port=0), stderr=err)
    await server.start()
    await server.close()
    assert err.getvalue() == f"migemu: dashboard at {server.url}\n"  # picked port: say where
    err = io.StringIO()
    options = DashboardOptions(port=0, url_file=str(tmp_path / "url"))
    server = DashboardServer([MachineSource(machine)], options, stderr=err)
    await server.start()
    await server.close()
    assert err.getvalue() == ""  # the URL went to the file


async def test_close_ends_open_pages(machine):
    server = DashboardServer([MachineSource(machine)], DashboardOptions(port=0, url_file=None))
    server.stderr = io.StringIO()
    await server.start()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}ws") as ws:
            assert (await ws.receive_json(timeout=DEADLINE_S))["type"] == "snapshot"
            started = time.monotonic()
            await asyncio.wait_for(server.close(), DEADLINE_S)
            assert time.monotonic() - started < 1.5  # not SHUTDOWN_TIMEOUT_S
            while (msg := await ws.receive(timeout=DEADLINE_S)).type == aiohttp.WSMsgType.TEXT:
                pass
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
