"""libvirt 9.0's probe and start-up commands: migemu's answers against real QEMU 7.2's.

The recordings in ``migemu/data/qemu-7.2/libvirt`` are real QEMU's answers; migemu serves
them. These tests send every recorded request to a migemu started with the same command
line and compare, re-record real QEMU when it is installed (the data must be current), and
check the answers migemu computes itself (chardevs, vCPUs, devices) against a live QEMU.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from migemu.emulator.cmdline import parse_command_line
from migemu.emulator.commands.probe import view_from_config
from migemu.tools import record_probe

QEMU = shutil.which("qemu-system-x86_64")
MIGEMU = [sys.executable, "-m", "migemu"]
SESSIONS = record_probe.load_requests()
# Answered from this process's state, not from the recording (compared below with QEMU).
LIVE = {"query-version", "query-qmp-schema", "query-commands", "query-kvm"}


def recorded(name: str) -> list[dict]:
    return json.loads(record_probe.session_file(name).read_text())


@pytest.mark.parametrize("session", sorted(SESSIONS))
def test_migemu_gives_the_recorded_answers(session: str) -> None:
    ours = record_probe.record_session(MIGEMU, SESSIONS[session])
    theirs = recorded(session)
    assert [e["request"] for e in ours] == [e["request"] for e in theirs]
    for mine, real in zip(ours, theirs, strict=True):
        if mine["request"]["execute"] in LIVE:
            continue
        assert mine["reply"] == real["reply"], mine["request"]


def test_live_answers_differ_only_where_migemu_is_not_qemu() -> None:
    ours = {
        e["request"]["execute"]: e["reply"]
        for e in record_probe.record_session(MIGEMU, SESSIONS["probe"], mask=False)
    }
    assert ours["query-kvm"] == {"return": {"enabled": False, "present": False}}  # no KVM
    assert ours["query-version"]["return"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize("session", sorted(SESSIONS))
def test_recordings_are_current(session: str) -> None:
    """Real QEMU still gives exactly the recorded answers (as ``record_probe --check``)."""
    assert QEMU is not None
    fresh = record_probe.record_session(QEMU, SESSIONS[session])
    old = recorded(session)
    for new, rec in zip(fresh, old, strict=True):
        if new["request"]["execute"] == "query-kvm":
            continue  # "present" says whether this host has /dev/kvm: masked in the data
        assert new == rec, new["request"]


def _domain(extra: list[str]) -> dict:
    session = dict(SESSIONS["domain"])
    argv = list(session["argv"])
    smp = argv.index("-smp")
    argv[smp + 1] = "2,sockets=2,cores=1,threads=1"
    session["argv"] = argv + extra
    return session


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_live_answers_match_qemu_for_another_domain() -> None:
    """Two vCPUs, a second device and a second (unconnected) chardev: computed answers."""
    extra = [
        "-device",
        '{"driver":"piix3-usb-uhci","id":"usb2","bus":"pci.0","addr":"0x5"}',
        "-chardev",
        "socket,id=spare,path=@QMP_SOCKET@.spare,server=on,wait=off",
    ]
    session = _domain(extra)
    session["requests"] = [
        {"execute": "query-hotpluggable-cpus"},
        {"execute": "query-cpus-fast"},
        {"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}},
        {"execute": "query-chardev"},
        {
            "execute": "qom-get",
            "arguments": {"path": "/machine/unattached/device[1]", "property": "sse2"},
        },
        {"execute": "qom-list", "arguments": {"path": "/machine/nothing"}},
    ]
    ours = record_probe.record_session(MIGEMU, session)
    real = record_probe.record_session(QEMU, session)
    for mine, theirs in zip(ours, real, strict=True):
        if mine["request"]["execute"] == "qom-list" and "peripheral" in json.dumps(mine["request"]):
            # QOM children come in GLib hash order: compare as sets
            key = lambda r: sorted(map(json.dumps, r["return"]))  # noqa: E731
            assert key(mine["reply"]) == key(theirs["reply"])
        elif mine["request"]["execute"] == "query-chardev":
            key = lambda r: sorted(map(json.dumps, r["return"]))  # noqa: E731
            assert key(mine["reply"]) == key(theirs["reply"])
        else:
            assert mine["reply"] == theirs["reply"], mine["request"]


def test_unrecorded_arguments_get_a_clear_error() -> None:
    session = {
        "argv": SESSIONS["probe"]["argv"],
        "requests": [
            {
                "execute": "query-cpu-model-expansion",
                "arguments": {"type": "full", "model": {"name": "EPYC"}},
            },
            {"execute": "device-list-properties", "arguments": {"typename": "no-such-device"}},
            {"execute": "query-cpus-fast"},
            {"execute": "query-target"},
        ],
    }
    replies = [e["reply"] for e in record_probe.record_session(MIGEMU, session)]
    assert replies[0]["error"]["class"] == "GenericError"
    assert (
        "no recorded QEMU 7.2 answer for query-cpu-model-expansion" in replies[0]["error"]["desc"]
    )
    assert replies[1] == {
        "error": {"class": "DeviceNotFound", "desc": "Device 'no-such-device' not found"}
    }
    assert replies[2] == {"return": []}  # -machine none has no CPU, as QEMU
    assert replies[3] == {"return": {"arch": "x86_64"}}  # and the process kept serving


def test_cpu_flags_of_the_command_line_show_in_qom_get() -> None:
    config = parse_command_line(
        ["qemu-system-x86_64", "-machine", "pc", "-cpu", "qemu64,hypervisor=on,lahf-lm=on,-sse4.2"]
    )
    view = view_from_config(config)
    assert view.cpu_model == "qemu64"
    assert view.cpu_props == {"hypervisor": True, "lahf-lm": True, "sse4.2": False}
