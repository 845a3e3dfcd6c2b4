"""The dashboard page: HTML, CSS and vanilla JavaScript served from memory (emulator layer).

No build step, no CDN: the three texts below are the whole front end. The page opens the
WebSocket next to it (relative URLs, so it also works under ``/N/`` in attach mode), draws
the snapshot, then applies pushed updates: run state, query-migrate, settings, events and
chart points. The chart is a canvas; ``data-points`` on it counts the points drawn.
"""

from __future__ import annotations

import html

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>migemu dashboard</title>
<link rel="stylesheet" href="style.css">
<script src="app.js" defer></script>
</head>
<body>
<header>
  <h1>migemu <span class="dim">dashboard</span></h1>
  <span id="label" class="label"></span>
  <span id="version" class="dim"></span>
  <span class="spacer"></span>
  <span class="dim">VM</span> <span id="run-state" class="badge">?</span>
  <span id="conn" class="conn" title="live updates">connecting</span>
</header>
<main>
  <section class="card wide">
    <h2>Migration <span id="migration-status" class="badge big" data-status="none">none</span></h2>
    <div class="progress"><div id="progress-bar"></div></div>
    <div id="progress-text" class="dim small"></div>
    <div id="error-desc" class="error" hidden></div>
    <dl id="migration-table" class="kv"></dl>
  </section>
  <section class="card wide">
    <h2>Throughput and remaining
      <span class="legend"><i class="swatch mbps"></i>Mbps <i class="swatch rem"></i>remaining
      </span></h2>
    <canvas id="chart" data-points="0" height="260"></canvas>
  </section>
  <section id="controls" class="card wide" hidden>
    <h2>Controls</h2>
    <form id="control-form" class="controls">
      <input id="uri" placeholder="tcp:127.0.0.1:4444" autocomplete="off">
      <button id="do-migrate" type="submit">Migrate</button>
      <button id="do-cancel" type="button">Cancel</button>
      <input id="token" type="password" placeholder="token (printed on stderr)">
    </form>
    <div id="control-result" class="dim small"></div>
  </section>
  <section class="card">
    <h2>Parameters</h2>
    <dl id="parameters" class="kv"></dl>
  </section>
  <section class="card">
    <h2>Capabilities</h2>
    <div id="capabilities" class="chips"></div>
  </section>
  <section class="card wide">
    <h2>Events <span id="event-count" class="dim small"></span></h2>
    <ol id="events" class="events"></ol>
  </section>
</main>
</body>
</html>
"""

STYLE_CSS = """
:root { --bg: #0f1419; --card: #182029; --line: #2a3440; --fg: #dde3ea; --dim: #8a96a3;
  --blue: #4ea1ff; --orange: #ff9f43; --green: #3ecf8e; --red: #ff5d5d; --yellow: #f5c542; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { display: flex; align-items: center; gap: 10px; padding: 12px 20px;
  border-bottom: 1px solid var(--line); background: #121920; }
h1 { font-size: 18px; margin: 0; }
h2 { font-size: 15px; margin: 0 0 10px; display: flex; align-items: center; gap: 10px; }
.dim { color: var(--dim); }
.small { font-size: 12px; }
.spacer { flex: 1; }
.label { font-weight: 600; }
main { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px;
  padding: 16px 20px; max-width: 1300px; margin: 0 auto; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 16px; min-width: 0; }
.wide { grid-column: 1 / -1; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; background: #2a3440;
  font-size: 13px; font-weight: 600; }
.badge.big { font-size: 14px; padding: 2px 12px; }
.badge[data-status="running"], .badge[data-status="completed"] { background: #164d36;
  color: var(--green); }
.badge[data-status="active"], .badge[data-status="setup"], .badge[data-status="device"],
.badge[data-status="pre-switchover"], .badge[data-status="inmigrate"],
.badge[data-status="finish-migrate"] { background: #173a5e; color: var(--blue); }
.badge[data-status="failed"], .badge[data-status="shutdown"],
.badge[data-status="internal-error"] { background: #5a1d1d; color: var(--red); }
.badge[data-status="cancelled"], .badge[data-status="cancelling"], .badge[data-status="paused"],
.badge[data-status="postmigrate"] { background: #4d4216; color: var(--yellow); }
.conn { font-size: 12px; color: var(--dim); }
.conn::before { content: "\\25CF "; color: var(--red); }
.conn.live::before { color: var(--green); }
.progress { height: 8px; background: #0d1216; border-radius: 4px; overflow: hidden;
  margin: 4px 0; }
#progress-bar { height: 100%; width: 0; background: linear-gradient(90deg, var(--blue),
  var(--green)); transition: width .2s; }
.kv { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr));
  gap: 2px 18px; margin: 10px 0 0; }
.kv div { display: flex; justify-content: space-between; gap: 8px;
  border-bottom: 1px dotted var(--line); padding: 2px 0; }
.kv dt { color: var(--dim); }
.kv dd { margin: 0; font-variant-numeric: tabular-nums; text-align: right;
  overflow-wrap: anywhere; }
#parameters.kv { grid-template-columns: 1fr; }
canvas { width: 100%; height: 260px; display: block; }
.legend { margin-left: auto; font-weight: normal; font-size: 12px; color: var(--dim); }
.swatch { display: inline-block; width: 14px; height: 3px; vertical-align: middle;
  margin: 0 4px 0 10px; }
.swatch.mbps { background: var(--blue); }
.swatch.rem { background: var(--orange); }
.chips { display: flex; flex-wrap: wrap; gap: 6px; }
.chip { padding: 1px 8px; border-radius: 10px; border: 1px solid var(--line);
  color: var(--dim); font-size: 12px; }
.chip.on { border-color: var(--green); color: var(--green); }
.events { list-style: none; margin: 0; padding: 0; max-height: 300px; overflow-y: auto;
  font: 12px/1.5 ui-monospace, "SFMono-Regular", Menlo, monospace; }
.events li { padding: 2px 0; border-bottom: 1px solid #1f2831; white-space: pre-wrap; }
.events .t { color: var(--dim); margin-right: 8px; }
.events .n { color: var(--blue); margin-right: 8px; font-weight: 600; }
.error { color: var(--red); margin: 6px 0; }
.controls { display: flex; gap: 8px; flex-wrap: wrap; }
.controls input { background: #0d1216; color: var(--fg); border: 1px solid var(--line);
  border-radius: 4px; padding: 5px 8px; min-width: 220px; }
.controls button { background: #23405f; color: var(--fg); border: 1px solid var(--blue);
  border-radius: 4px; padding: 5px 14px; cursor: pointer; }
@media (max-width: 800px) { main { grid-template-columns: 1fr; } }
"""

APP_JS = r"""
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = { samples: [], series: 0, events: [], writable: false };

  // -- formatting ----------------------------------------------------------------------
  function bytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n < 10 ? 2 : 1) : String(n)) + " " + units[i];
  }
  const ms = (n) => typeof n !== "number" ? "–" :
    n < 1000 ? n + " ms" : (n / 1000).toFixed(2) + " s";
  const num = (n) => typeof n !== "number" ? "–" : n.toLocaleString("en-US");
  const mbps = (n) => typeof n !== "number" ? "–" : n.toFixed(1) + " Mbps";

  function kv(el, rows) {
    el.replaceChildren(...rows.map(([k, v]) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      div.append(dt, dd);
      return div;
    }));
  }

  // -- sections ------------------------------------------------------------------------
  function showIdentity(identity) {
    if (!identity) return;
    $("label").textContent = identity.name || identity.label || "";
    const v = identity.version;
    if (v && v.qemu) {
      $("version").textContent = `QEMU ${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}` +
        (v.package ? ` (${v.package.trim()})` : "");
    }
    document.title = `${identity.name || identity.label || "migemu"} · dashboard`;
  }

  function showStatus(status) {
    const el = $("run-state");
    const s = (status && status.status) || "?";
    el.textContent = s;
    el.dataset.status = s;
  }

  function showMigration(info) {
    const status = (info && info.status) || "none";
    const el = $("migration-status");
    el.textContent = status;
    el.dataset.status = status;
    const ram = info.ram || {};
    const rows = [];
    const times = [["total-time", "total time"], ["setup-time", "setup time"],
      ["expected-downtime", "expected downtime"], ["downtime", "downtime"]];
    for (const [key, name] of times) {
      if (info[key] !== undefined) rows.push([name, ms(info[key])]);
    }
    if (info.ram) {
      rows.push(["throughput", mbps(ram.mbps)], ["transferred", bytes(ram.transferred)],
        ["remaining", bytes(ram.remaining)], ["total", bytes(ram.total)],
        ["multifd bytes", bytes(ram["multifd-bytes"])], ["normal pages", num(ram.normal)],
        ["zero pages", num(ram.duplicate)], ["dirty syncs", num(ram["dirty-sync-count"])],
        ["pages/s", num(ram["pages-per-second"])],
        ["dirty pages rate", num(ram["dirty-pages-rate"])]);
    }
    if (info["socket-address"]) {
      const where = info["socket-address"].map(a => a.path || `${a.host}:${a.port}`);
      rows.push(["listening", where.join(", ")]);
    }
    kv($("migration-table"), rows);
    const total = ram.total || 0;
    const done = status === "completed" ? 1 :
      total ? Math.max(0, Math.min(1, 1 - (ram.remaining || 0) / total)) : 0;
    $("progress-bar").style.width = (done * 100).toFixed(1) + "%";
    $("progress-text").textContent = info.ram ?
      `${(done * 100).toFixed(1)}% · ${bytes(ram.transferred)} sent` : "";
    const err = $("error-desc");
    err.hidden = !info["error-desc"];
    err.textContent = info["error-desc"] || "";
  }

  function showSettings(parameters, capabilities) {
    if (parameters) {
      kv($("parameters"), Object.entries(parameters).map(([k, v]) =>
        [k, typeof v === "object" ? JSON.stringify(v) : String(v)]));
    }
    if (capabilities) {
      $("capabilities").replaceChildren(...capabilities.map(c => {
        const span = document.createElement("span");
        span.className = "chip" + (c.state ? " on" : "");
        span.textContent = c.capability;
        span.title = c.state ? "on" : "off";
        return span;
      }));
    }
  }

  function eventItem(ev) {
    const li = document.createElement("li");
    const ts = ev.timestamp ? new Date(ev.timestamp.seconds * 1000 +
      ev.timestamp.microseconds / 1000) : new Date();
    const t = document.createElement("span"); t.className = "t";
    t.textContent = ts.toISOString().slice(11, 23);
    const n = document.createElement("span"); n.className = "n"; n.textContent = ev.event;
    li.append(t, n, ev.data ? JSON.stringify(ev.data) : "");
    return li;
  }

  function addEvent(ev) {
    state.events.push(ev);
    const list = $("events");
    list.prepend(eventItem(ev));
    while (list.children.length > 200) list.lastChild.remove();
    $("event-count").textContent = `${state.events.length} seen`;
  }

  // -- chart ---------------------------------------------------------------------------
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart() {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const pad = { l: 62, r: 70, t: 10, b: 28 };
    const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
    const pts = state.samples;
    const t0 = pts.length ? pts[0].t : 0;
    const tMax = niceMax(pts.length ? pts[pts.length - 1].t - t0 : 1);
    const mMax = niceMax(Math.max(0, ...pts.map(p => p.mbps || 0)));
    const rPeak = Math.max(0, ...pts.map(p => Math.max(p.remaining || 0, p.total || 0)));
    const rMax = niceMax(rPeak / 1048576);
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#2a3440"; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + ph - (ph * i) / 4;
      g.beginPath(); g.moveTo(pad.l, y + 0.5); g.lineTo(pad.l + pw, y + 0.5); g.stroke();
      g.fillStyle = "#4ea1ff"; g.textAlign = "right";
      g.fillText(((mMax * i) / 4).toLocaleString("en-US"), pad.l - 6, y + 4);
      g.fillStyle = "#ff9f43"; g.textAlign = "left";
      g.fillText(((rMax * i) / 4).toLocaleString("en-US") + " MiB", pad.l + pw + 6, y + 4);
    }
    g.fillStyle = "#8a96a3"; g.textAlign = "center";
    for (let i = 0; i <= 5; i++) {
      const x = pad.l + (pw * i) / 5;
      g.fillText(((tMax * i) / 5).toFixed(tMax < 5 ? 1 : 0) + " s", x, h - 8);
    }
    g.save(); g.translate(12, pad.t + ph / 2); g.rotate(-Math.PI / 2);
    g.fillStyle = "#4ea1ff"; g.fillText("Mbps", 0, 0); g.restore();
    const X = (p) => pad.l + ((p.t - t0) / tMax) * pw;
    function line(value, max, color, fill) {
      if (!pts.length) return;
      g.beginPath();
      pts.forEach((p, i) => {
        const y = pad.t + ph - (value(p) / max) * ph;
        if (i) g.lineTo(X(p), y); else g.moveTo(X(p), y);
      });
      g.strokeStyle = color; g.lineWidth = 2; g.stroke();
      if (fill) {
        g.lineTo(X(pts[pts.length - 1]), pad.t + ph); g.lineTo(X(pts[0]), pad.t + ph);
        g.closePath(); g.fillStyle = fill; g.fill();
      }
      pts.forEach(p => {
        g.beginPath(); g.arc(X(p), pad.t + ph - (value(p) / max) * ph, 2.5, 0, 2 * Math.PI);
        g.fillStyle = color; g.fill();
      });
    }
    line(p => (p.remaining || 0) / 1048576, rMax, "#ff9f43", "rgba(255,159,67,0.12)");
    line(p => p.mbps || 0, mMax, "#4ea1ff", null);
    if (!pts.length) {
      g.fillStyle = "#8a96a3"; g.textAlign = "center";
      g.fillText("no migration yet", pad.l + pw / 2, pad.t + ph / 2);
    }
    canvas.dataset.points = String(pts.length);
  }

  let drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; drawChart(); });
  }

  // -- updates -------------------------------------------------------------------------
  function apply(msg) {
    switch (msg.type) {
      case "snapshot":
        showIdentity(msg.identity);
        showStatus(msg.status);
        showMigration(msg.migration || {});
        showSettings(msg.parameters, msg.capabilities);
        state.events = []; $("events").replaceChildren();
        (msg.events || []).forEach(addEvent);
        state.samples = msg.samples || [];
        scheduleDraw();
        break;
      case "status": showStatus(msg.status); break;
      case "settings": showSettings(msg.parameters, msg.capabilities); break;
      case "event": addEvent(msg.event); break;
      case "migration":
        if (msg.series !== state.series) { state.series = msg.series; state.samples = []; }
        showMigration(msg.migration);
        if (msg.sample) { state.samples.push(msg.sample); scheduleDraw(); }
        break;
    }
  }

  let retry = 250;
  function connect() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    const ws = new WebSocket(url);
    const conn = $("conn");
    ws.onopen = () => { conn.textContent = "live"; conn.classList.add("live"); retry = 250; };
    ws.onmessage = (e) => apply(JSON.parse(e.data));
    ws.onclose = () => {
      conn.textContent = "disconnected"; conn.classList.remove("live");
      setTimeout(connect, retry); retry = Math.min(retry * 2, 5000);
    };
  }

  // -- controls (writable dashboards only) ---------------------------------------------
  async function command(name, args) {
    const token = $("token").value.trim();
    const resp = await fetch("api/command/" + name, {
      method: "POST", body: JSON.stringify(args || {}),
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
    });
    const body = await resp.json();
    $("control-result").textContent = resp.ok ? `${name}: ok` :
      `${name}: ${body.error && (body.error.desc || body.error)}`;
  }

  async function setupControls() {
    const hash = new URLSearchParams(location.hash.slice(1));
    if (hash.get("token")) {
      sessionStorage.setItem("migemu-token", hash.get("token"));
      history.replaceState(null, "", location.pathname + location.search);
    }
    $("token").value = sessionStorage.getItem("migemu-token") || "";
    try {
      const snap = await (await fetch("api/snapshot")).json();
      state.writable = !!snap.writable;
    } catch (e) { state.writable = false; }
    $("controls").hidden = !state.writable;
    $("control-form").addEventListener("submit", (e) => {
      e.preventDefault(); command("migrate", { uri: $("uri").value.trim() });
    });
    $("do-cancel").addEventListener("click", () => command("migrate_cancel", {}));
  }

  window.addEventListener("resize", scheduleDraw);
  setupControls();
  connect();
  scheduleDraw();
})();
"""


def listing_html(labels: list[str]) -> str:
    """The attach mode's index when it serves several instances."""
    items = "".join(
        f'<li><a href="{n}/">{html.escape(label)}</a></li>'
        for n, label in enumerate(labels, start=1)
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<title>migemu dashboards</title><link rel="stylesheet" href="1/style.css"></head>'
        f'<body><main><section class="card wide"><h2>Instances</h2><ul>{items}</ul>'
        "</section></main></body></html>"
    )
