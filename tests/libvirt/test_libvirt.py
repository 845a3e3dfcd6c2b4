"""libvirt 9.0 drives migemu as it drives real QEMU 7.2: probe, define, start, domjobinfo,
destroy — the same virsh results, differential when real QEMU is installed.

One private libvirtd (``daemon.py``: its own config and dirs in a mount namespace, ended by
PID) serves the module. The emulators are two-line wrapper scripts, as a user would write
them: one execs migemu, one execs real QEMU.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Libvirtd, ensure_accounts, missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")

DOMAIN_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<emulator>{emulator}</emulator><memballoon model='none'/></devices></domain>"""

# domcapabilities lines that differ, each for a reason: migemu has no VNC/SDL/egl-headless/
# D-Bus display and no block layer to back up (its schema shows only what it implements).
EXPLAINED_DOMCAPS_DIFFERENCES = {
    "<value>sdl</value>",
    "<value>vnc</value>",
    "<value>egl-headless</value>",
    "<value>dbus</value>",
    "<backup supported='yes'/>",
    "<backup supported='no'/>",
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Libvirtd, dict[str, Path]]]:
    ensure_accounts()
    root = tmp_path_factory.mktemp("libvirt")
    wrappers = {}
    for kind, target in (("migemu", f"{sys.executable} -m migemu"), ("qemu", QEMU)):
        if target is None:
            continue
        w = root / "bin" / kind / "qemu-system-x86_64"
        w.parent.mkdir(parents=True)
        w.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        w.chmod(0o755)
        wrappers[kind] = w
    daemon = Libvirtd(root / "daemon")
    daemon.start()
    try:
        yield daemon, wrappers
    finally:
        daemon.stop()


def _domcaps(daemon: Libvirtd, emulator: Path) -> list[str]:
    xml = daemon.virsh("domcapabilities", "--emulatorbin", str(emulator), "--virttype", "qemu")
    return [line.strip() for line in xml.stdout.replace(str(emulator), "EMULATOR").splitlines()]


def test_domcapabilities_probe_succeeds(rig) -> None:
    daemon, wrappers = rig
    lines = _domcaps(daemon, wrappers["migemu"])
    text = "\n".join(lines)
    assert "<path>EMULATOR</path>" in text
    assert "<machine>pc-i440fx-7.2</machine>" in text
    assert "<arch>x86_64</arch>" in text


@needs_qemu
def test_domcapabilities_same_as_qemu(rig) -> None:
    daemon, wrappers = rig
    ours = _domcaps(daemon, wrappers["migemu"])
    theirs = _domcaps(daemon, wrappers["qemu"])
    only_ours = [x for x in ours if x not in theirs]
    only_theirs = [x for x in theirs if x not in ours]
    assert set(only_ours) <= EXPLAINED_DOMCAPS_DIFFERENCES, only_ours
    assert set(only_theirs) <= EXPLAINED_DOMCAPS_DIFFERENCES, only_theirs
    same = [x for x in ours if x not in EXPLAINED_DOMCAPS_DIFFERENCES]
    assert same == [x for x in theirs if x not in EXPLAINED_DOMCAPS_DIFFERENCES]


def _lifecycle(daemon: Libvirtd, name: str, emulator: Path, tmp: Path) -> list[tuple[int, str]]:
    xml = tmp / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, emulator=emulator))
    out = []
    steps = [
        ["define", str(xml)],
        ["start", name],
        ["domstate", name],
        ["domjobinfo", name],
        ["suspend", name],
        ["domstate", name],
        ["resume", name],
        ["domstate", name],
        ["destroy", name],
        ["domstate", name],
        ["undefine", name],
    ]
    try:
        for args in steps:
            r = daemon.virsh(*args, check=False)
            text = (r.stdout + r.stderr).replace(str(xml), "XML").replace(name, "NAME")
            out.append((r.returncode, text.strip()))
    finally:
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", name, check=False)
    return out


def test_define_start_domjobinfo_destroy(rig, tmp_path: Path) -> None:
    daemon, wrappers = rig
    results = _lifecycle(daemon, "lv-migemu", wrappers["migemu"], tmp_path)
    assert [rc for rc, _ in results] == [0] * len(results), results
    assert results[2][1] == "running"
    assert results[3][1] == "Job type:         None"
    assert results[5][1] == "paused"
    assert results[9][1] == "shut off"


@needs_qemu
def test_lifecycle_same_as_qemu(rig, tmp_path: Path) -> None:
    daemon, wrappers = rig
    ours = _lifecycle(daemon, "lv-m", wrappers["migemu"], tmp_path)
    theirs = _lifecycle(daemon, "lv-q", wrappers["qemu"], tmp_path)
    assert ours == theirs


def _startup_exchanges(daemon: Libvirtd, domain_log: Path) -> list[tuple[str, str]]:
    """The QMP exchanges of the last domain start in the daemon's log (a start begins with
    query-migrate-capabilities right after qmp_capabilities on a new monitor)."""
    pairs = daemon.qmp_exchanges()
    starts = [i for i, (sent, _) in enumerate(pairs) if '"query-hotpluggable-cpus"' in sent]
    assert starts, "no domain start in libvirt's monitor log"
    begin = starts[-1] - 4
    end = next(i for i in range(begin, len(pairs)) if '"execute":"cont"' in pairs[i][0])
    return pairs[begin : end + 1]


def _normalized(reply: str) -> object:
    value = json.loads(reply)
    value.pop("id", None)
    text = json.dumps(value)
    text = re.sub(r'"thread-id": \d{3,}', '"thread-id": "TID"', text)
    text = re.sub(r"/var/lib/libvirt/qemu/domain-\d+-[^/]+/", "DOMAIN_DIR/", text)
    return json.loads(text)


@needs_qemu
def test_startup_replies_same_as_qemu(rig, tmp_path: Path) -> None:
    """Every reply libvirt got while starting the domain is QEMU's, in the same order."""
    daemon, wrappers = rig
    got = {}
    for kind in ("migemu", "qemu"):
        name = f"lv-start-{kind}"
        xml = tmp_path / f"{name}.xml"
        xml.write_text(DOMAIN_XML.format(name="lv-start", emulator=wrappers[kind]))
        daemon.virsh("define", str(xml))
        try:
            daemon.virsh("start", "lv-start")
            got[kind] = _startup_exchanges(daemon, daemon.domain_log("lv-start"))
        finally:
            daemon.virsh("destroy", "lv-start", check=False)
            daemon.virsh("undefine", "lv-start", check=False)
    ours = [(re.sub(r'"id":"libvirt-\d+"', "", s), _normalized(r)) for s, r in got["migemu"]]
    theirs = [(re.sub(r'"id":"libvirt-\d+"', "", s), _normalized(r)) for s, r in got["qemu"]]
    assert len(ours) > 400  # ~400 qom-get of CPU features among them
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    for (sent, mine), (_, real) in zip(ours, theirs, strict=True):
        assert mine == real, sent


def test_no_command_not_found(rig, tmp_path: Path) -> None:
    """After the flows above, libvirt never got CommandNotFound from migemu."""
    daemon, wrappers = rig
    _domcaps(daemon, wrappers["migemu"])
    _lifecycle(daemon, "lv-cnf", wrappers["migemu"], tmp_path)
    log = daemon.monitor_log()
    assert "QEMU_MONITOR_RECV_REPLY" in log
    assert "CommandNotFound" not in log
