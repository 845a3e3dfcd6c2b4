"""End to end: the dashboard of a real migemu in Debian's chromium, and ``migemu dashboard``.

The browser test starts a source with ``-dashboard 127.0.0.1:0`` (it prints where it listens
on stderr) and a destination, opens the page with playwright driving /usr/bin/chromium (never
a downloaded browser; skipped when either is missing), migrates over QMP and waits for the
page to show ``completed`` and a drawn chart. The attach test serves a running migemu's spare
QMP monitor with ``migemu dashboard --writable``, starts a migration through the API with the
token printed on stderr and follows it to the end through the JSON API and /metrics.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from harness import DEADLINE_S, QEMU, Cluster, make_image, migemu_cmd, qemu_cmd, setup_pair

pytestmark = pytest.mark.asyncio

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MIB = 16
BANDWIDTH = 16 << 20  # bytes/s: the migration lasts long enough to chart a few points
URL_LINE = re.compile(r"dashboard at (http://127\.0\.0\.1:\d+/)")
SCREENSHOT_DIR = os.environ.get("MIGEMU_DASHBOARD_SCREENSHOT_DIR")  # keep the screenshot


async def wait_for(predicate, what: str, deadline_s: float = DEADLINE_S):
    end = time.monotonic() + deadline_s
    while not (value := predicate()):
        if time.monotonic() > end:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)
    return value


async def dashboard_url(cluster: Cluster, name: str) -> str:
    def found() -> str | None:
        m = URL_LINE.search(cluster.log(name))
        return m.group(1) if m else None

    return await wait_for(found, f"{name} did not print its dashboard URL")


# The chart's pixels that are neither transparent nor the grid: the lines drawn.
CHART_INK_JS = """() => {
  const c = document.getElementById('chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
    if (a > 200 && ((b > 200 && r < 120) || (r > 200 && g > 120 && b < 100))) ink++;
  }
  return ink;
}"""


async def test_page_follows_a_migration(cluster, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    playwright_api = pytest.importorskip("playwright.async_api")
    image = tmp_path / "image.ram"
    make_image(image, MIB, seed=3)
    src = await cluster.start(
        "src", mem_mib=MIB, image=image, share=False, extra=["-dashboard", "127.0.0.1:0"]
    )
    dst = await cluster.start("dst", mem_mib=MIB, incoming="defer")
    url = await dashboard_url(cluster, "src")
    uri = await setup_pair(src, dst, multifd=True, method="zstd", bandwidth=BANDWIDTH)

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            await page.wait_for_function(
                "() => document.getElementById('conn').textContent === 'live'", timeout=10_000
            )
            assert await page.text_content("#migration-status") == "none"
            assert await page.text_content("#run-state") == "running"
            chips = await page.locator("#capabilities .chip.on").all_text_contents()
            assert "multifd" in chips and "events" in chips

            await src.cmd("migrate", {"uri": uri})
            await page.wait_for_function(
                "() => document.getElementById('migration-status').textContent === 'completed'",
                timeout=30_000,
            )
            await src.wait_status(["completed"])
            await page.wait_for_function(
                "() => document.getElementById('run-state').textContent === 'postmigrate'",
                timeout=10_000,
            )
            points = int(await page.get_attribute("#chart", "data-points") or 0)
            assert points >= 3  # setup, the passes, completed
            assert await page.evaluate(CHART_INK_JS) > 100
            log = await page.text_content("#events")
            assert log is not None and '"status":"completed"' in log and "STOP" in log
            assert errors == []
            shot = Path(SCREENSHOT_DIR or tmp_path) / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
        finally:
            await browser.close()


async def test_attach_mode_runs_a_migration(cluster, tmp_path):
    image = tmp_path / "image.ram"
    make_image(image, 8, seed=4)
    spare = tmp_path / "spare.sock"
    src = await cluster.start(
        "src",
        mem_mib=8,
        image=image,
        share=False,
        extra=["-qmp", f"unix:{spare},server=on,wait=off"],
    )
    dst = await cluster.start("dst", mem_mib=8, incoming="defer")
    url_file = tmp_path / "dashboard.url"
    log = open(tmp_path / "attach.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*migemu_cmd(), "dashboard", "--writable", "--url-file", str(url_file), str(spare)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        await wait_for(lambda: url_file.exists() or proc.poll() is not None, "no URL file")
        assert proc.poll() is None, (tmp_path / "attach.log").read_text()
        url = url_file.read_text().strip()
        token = await wait_for(
            lambda: re.findall(r"#token=(\S+)", (tmp_path / "attach.log").read_text()),
            "no token on stderr",
        )
        auth = {"Authorization": f"Bearer {token[0]}"}
        uri = await setup_pair(src, dst, multifd=True, method="zlib")
        async with aiohttp.ClientSession() as session:

            async def get(path: str):
                async with session.get(url + path) as resp:
                    assert resp.status == 200, path
                    return await (resp.json() if path.startswith("api") else resp.text())

            assert (await get("api/status"))["status"] == "running"
            caps = {c["capability"]: c["state"] for c in await get("api/capabilities")}
            assert caps["multifd"] is True
            migrate = url + "api/command/migrate"
            async with session.post(migrate, json={"uri": uri}) as resp:
                assert resp.status == 403  # writable, but only with the token
            async with session.post(migrate, json={"uri": uri}, headers=auth) as resp:
                assert resp.status == 200 and await resp.json() == {"return": {}}
            await src.wait_status(["completed"])
            end = time.monotonic() + DEADLINE_S
            while True:  # events reach the dashboard over its own QMP connection
                names = [(e["event"], (e.get("data") or {}).get("status")) for e in
                         await get("api/events")]  # fmt: skip
                if ("MIGRATION", "completed") in names or time.monotonic() > end:
                    break
                await asyncio.sleep(0.02)
            assert ("MIGRATION", "setup") in names and ("MIGRATION", "completed") in names
            assert (await get("api/migration"))["status"] == "completed"
            metrics = await get("metrics")
            assert 'migemu_migration_status{status="completed"} 1' in metrics
            assert 'migemu_vm_status{status="postmigrate"} 1' in metrics
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not url_file.exists()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
async def test_attach_mode_on_real_qemu(cluster, tmp_path):
    spare = tmp_path / "spare.sock"
    qemu = await cluster.start(
        "qemu", mem_mib=8, binary=qemu_cmd(), extra=["-qmp", f"unix:{spare},server=on,wait=off"]
    )
    url_file = tmp_path / "dashboard.url"
    log_path = tmp_path / "attach.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*migemu_cmd(), "dashboard", "--writable", "--url-file", str(url_file), str(spare)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        await wait_for(lambda: url_file.exists() or proc.poll() is not None, "no URL file")
        assert proc.poll() is None, log_path.read_text()
        url = url_file.read_text().strip()
        (token,) = re.findall(r"#token=(\S+)", log_path.read_text())
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "api/snapshot") as resp:
                snapshot = await resp.json()
            assert snapshot["identity"]["version"]["qemu"]["major"] == 7
            assert snapshot["status"]["status"] == "running"
            auth = {"Authorization": f"Bearer {token}"}
            async with session.post(url + "api/command/stop", headers=auth) as resp:
                assert resp.status == 200
            assert (await qemu.cmd("query-status"))["status"] == "paused"

            async def stopped_seen() -> bool:
                async with session.get(url + "api/events") as resp:
                    return "STOP" in [e["event"] for e in await resp.json()]

            end = time.monotonic() + DEADLINE_S
            while not await stopped_seen():  # QEMU's event, through qemu.qmp
                assert time.monotonic() < end, "no STOP event from QEMU"
                await asyncio.sleep(0.02)
            async with session.get(url + "metrics") as resp:
                metrics = await resp.text()
            assert 'migemu_vm_status{status="paused"} 1' in metrics
            assert 'migemu_migration_status{status="none"} 1' in metrics
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
