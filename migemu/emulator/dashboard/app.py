"""The dashboard's HTTP side: page, JSON API, /metrics and the WebSocket (aiohttp, emulator layer).

``create_app(hub, ...)`` serves one instance: ``/`` (the page, all assets local), ``/api/*``
(fresh answers to the queries the page shows), ``/metrics`` (Prometheus text) and ``/ws``
(a snapshot, then pushed updates). Read-only unless ``writable``: then ``POST /api/command/
NAME`` runs one of ``WRITE_COMMANDS`` for a request that carries ``Authorization: Bearer
TOKEN``. ``guard_middleware`` refuses other methods, foreign Host headers on a loopback
listener (DNS rebinding) and cross-origin WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import WSMsgType, web

from migemu.emulator.dashboard import page
from migemu.emulator.dashboard.hub import Hub
from migemu.emulator.dashboard.model import render_metrics
from migemu.emulator.dashboard.options import LOOPBACK_HOSTS
from migemu.emulator.dashboard.source import QueryError

# What a writable dashboard may run: the migration's controls, nothing else.
WRITE_COMMANDS = frozenset(
    {
        "migrate",
        "migrate_cancel",
        "migrate-set-parameters",
        "migrate-set-capabilities",
        "stop",
        "cont",
    }
)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY_BYTES = 64 * 1024

HUB_KEY = web.AppKey("hub", Hub)
TOKEN_KEY = web.AppKey("token", str)  # empty: read-only
LOOPBACK_KEY = web.AppKey("loopback", bool)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_token() -> str:
    return secrets.token_urlsafe(18)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, indent=1))


def _error(status: int, desc: str) -> web.Response:
    return _json({"error": desc}, status)


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.config_dict
    if app[LOOPBACK_KEY] and _host_name(request.headers.get("Host", "")) not in LOOPBACK_HOSTS:
        return _error(403, "unexpected Host header for a loopback dashboard")
    if request.method not in READ_METHODS and not app[TOKEN_KEY]:
        resp = _error(405, "the dashboard is read-only (start it with writable=on)")
        resp.headers["Allow"] = "GET, HEAD"
        return resp
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("Host"):
        return _error(403, "cross-origin request refused")
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


async def index(request: web.Request) -> web.Response:
    resp = web.Response(text=page.INDEX_HTML, content_type="text/html", charset="utf-8")
    resp.headers["Content-Security-Policy"] = page.CSP
    return resp


async def app_js(request: web.Request) -> web.Response:
    return web.Response(text=page.APP_JS, content_type="text/javascript", charset="utf-8")


async def style_css(request: web.Request) -> web.Response:
    return web.Response(text=page.STYLE_CSS, content_type="text/css", charset="utf-8")


async def _fresh(request: web.Request, what: str) -> web.Response:
    hub = request.app[HUB_KEY]
    if what == "status":
        return _json(await hub.refresh_status())
    if what == "migration":
        return _json(await hub.refresh_migration())
    await hub.refresh_settings()
    return _json(hub.model.parameters if what == "parameters" else hub.model.capabilities)


async def api_status(request: web.Request) -> web.Response:
    return await _fresh(request, "status")


async def api_migration(request: web.Request) -> web.Response:
    return await _fresh(request, "migration")


async def api_parameters(request: web.Request) -> web.Response:
    return await _fresh(request, "parameters")


async def api_capabilities(request: web.Request) -> web.Response:
    return await _fresh(request, "capabilities")


async def api_events(request: web.Request) -> web.Response:
    return _json(list(request.app[HUB_KEY].model.events))


async def api_snapshot(request: web.Request) -> web.Response:
    snapshot = request.app[HUB_KEY].model.snapshot()
    return _json({"writable": bool(request.app[TOKEN_KEY]), **snapshot})


async def metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    await hub.refresh_settings()
    await hub.refresh_status()
    await hub.refresh_migration()
    return web.Response(
        text=render_metrics(hub.model), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


async def api_command(request: web.Request) -> web.Response:
    token = request.app[TOKEN_KEY]
    auth = request.headers.get("Authorization", "")
    given = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
    if not secrets.compare_digest(given.encode(), token.encode()):
        return _error(403, "missing or wrong dashboard token")
    name = request.match_info["name"]
    if name not in WRITE_COMMANDS:
        return _error(404, f"'{name}' is not a dashboard command")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(413, "request body too large")
    body = await request.read()
    try:
        arguments = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body must be a JSON object of arguments")
    if not isinstance(arguments, dict):
        return _error(400, "the body must be a JSON object of arguments")
    hub = request.app[HUB_KEY]
    try:
        result = await hub.source.query(name, arguments)
    except QueryError as err:
        return _json({"error": {"class": err.error_class, "desc": err.desc}}, 400)
    hub.request_refresh()
    return _json({"return": result})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    hub = request.app[HUB_KEY]
    sub = hub.add_subscriber()

    async def pump() -> None:
        while (message := await sub.queue.get()) is not None:
            await ws.send_str(json.dumps(message))
        await ws.close()

    sender = asyncio.create_task(pump())
    try:
        async for msg in ws:  # pages only listen; anything they send is ignored
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        hub.remove_subscriber(sub)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    return ws


def instance_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/app.js", app_js)
    app.router.add_get("/style.css", style_css)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/migration", api_migration)
    app.router.add_get("/api/parameters", api_parameters)
    app.router.add_get("/api/capabilities", api_capabilities)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/snapshot", api_snapshot)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ws", websocket)
    app.router.add_post("/api/command/{name}", api_command)


def create_app(hub: Hub, *, token: str = "", loopback: bool = True) -> web.Application:
    """The dashboard of one instance; ``token`` non-empty makes it writable."""
    app = web.Application(middlewares=[guard_middleware], client_max_size=MAX_BODY_BYTES)
    app[HUB_KEY] = hub
    app[TOKEN_KEY] = token
    app[LOOPBACK_KEY] = loopback
    instance_routes(app)
    return app


def create_multi_app(
    hubs: Sequence[Hub], *, token: str = "", loopback: bool = True
) -> web.Application:
    """Several instances: ``/N/`` serves instance N (from 1), ``/`` lists them."""
    if len(hubs) == 1:
        return create_app(hubs[0], token=token, loopback=loopback)
    root = web.Application(middlewares=[guard_middleware])
    root[TOKEN_KEY] = token
    root[LOOPBACK_KEY] = loopback
    labels = [hub.source.label for hub in hubs]

    async def listing(request: web.Request) -> web.Response:
        return web.Response(text=page.listing_html(labels), content_type="text/html")

    root.router.add_get("/", listing)
    for number, hub in enumerate(hubs, start=1):
        sub = web.Application(client_max_size=MAX_BODY_BYTES)
        sub[HUB_KEY] = hub
        sub[TOKEN_KEY] = token
        sub[LOOPBACK_KEY] = loopback
        instance_routes(sub)
        root.add_subapp(f"/{number}/", sub)
    return root
