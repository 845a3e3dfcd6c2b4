"""Differential tests of the command line: real QEMU 7.2 and migemu's parser, line by line.

For each bad line, both must print the same stderr (program name substituted) and exit with
the same status. For each good line, QEMU must come up (answer query-status on QMP) and
migemu's parser must accept it, with the same warnings. Skipped when qemu-system-x86_64 is
not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from migemu.emulator.cmdline import CmdlineError, CmdlineExit, parse_command_line

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")

BASE = ["-machine", "none", "-nodefaults", "-display", "none"]
TIMEOUT_S = 10.0
OUR_PROG = "x-system-x86_64"

RAM = "memory-backend-ram,id=m,size=1M"
FILE_BE = "memory-backend-file,id=m,size=1M,mem-path={tmp}/ram"

# Command lines QEMU refuses. "{tmp}" is a fresh temporary directory.
BAD_LINES: list[list[str]] = [
    ["-foo"],
    ["--foo"],
    ["-m"],
    ["-bar", "-m"],
    ["-m", "foo", "-bar"],
    ["-m", "foo"],
    ["--m", "foo"],
    ["-m", "-1"],
    ["-m", "256MB"],
    ["-m", "1.5"],
    ["-m", "1 "],
    ["-m", "16E"],
    ["-m", "18446744073709551616"],
    ["-m", "17592186044416"],
    ["-m", "size=foo"],
    ["-m", "256,slots=x"],
    ["-m", "256,foo=1"],
    ["-m", "256,slots=2"],
    ["-m", "256,maxmem=128M"],
    ["-m", "foo", "-m", "bar"],
    ["-machine", "foo"],
    ["-M", "ubuntu"],
    ["-machine", "none,foo=bar"],
    ["-machine", "pc,foo=bar"],
    ["-machine", "q35,foo=bar"],
    ["-machine", "none,usb"],
    ["-machine", ",accel=tcg"],
    ["-machine", "none,dump-guest-core=maybe"],
    ["-machine", "none,dump-guest-core=ON"],
    ["-machine", "none,dump-guest-core=1"],
    ["-machine", "none,accel=foo"],
    ["-machine", "none,memory-backend=nope"],
    ["-object", "foo"],
    ["-object", "foo,id=x"],
    ["-object", "id=m,size=1M"],
    ["-object", "memory-backend-file"],
    ["-object", "memory-backend-file,size=foo"],
    ["-object", "memory-backend-file,id=m"],
    ["-object", "memory-backend-file,id=m,size=256M"],
    ["-object", "memory-backend-ram,id=m"],
    ["-object", "memory-backend-ram,id=1m,size=1M"],
    ["-object", RAM + ",size=foo"],
    ["-object", RAM + ",size=1e3"],
    ["-object", RAM + ",size=1.5"],
    ["-object", RAM + ",size=16E"],
    ["-object", RAM + ",share=maybe"],
    ["-object", RAM + ",foo=bar"],
    ["-object", RAM + ",policy=x"],
    ["-object", RAM + ",prealloc-threads=x"],
    ["-object", RAM + ",host-nodes=x"],
    ["-object", "memory-backend-file,id=m,readonly=x,pmem=x,size=1M"],
    ["-object", "memory-backend-file,id=m,align=x,size=x,share=x"],
    ["-object", "memory-backend-ram,id=m,size=0"],
    ["-object", "memory-backend-ram,id=m,size=0.0000001k"],
    ["-object", RAM, "-object", RAM],
    ["-object", RAM, "-object", RAM, "-uuid", "foo"],
    ["-m", "256M", "-object", "memory-backend-ram,id=m,size=128M", "-machine", "memory-backend=m"],
    ["-m", "128M", "-machine", "memory-backend=m"],
    ["-qmp", "foo"],
    ["-qmp", "none"],
    ["-qmp", "unix:"],
    ["-qmp", "tcp:127.0.0.1,server=on,wait=off"],
    ["-qmp", "tcp:1"],
    ["-qmp", "unix:{tmp}/q.sock,server=on,wait=maybe"],
    ["-qmp", "unix:{tmp}/q.sock,server=on,wait=off,foo=bar"],
    ["-monitor", "foo"],
    ["-serial", "foo"],
    ["-serial", "chardev:x"],
    ["-chardev", "foo"],
    ["-chardev", "foo,id=c"],
    ["-chardev", "id=c"],
    ["-chardev", "socket"],
    ["-chardev", "socket,id=c"],
    ["-chardev", "socket,id=c,host=127.0.0.1,server=on,wait=off"],
    ["-chardev", "socket,id=c,path={tmp}/c.sock,host=127.0.0.1,server=on,wait=off"],
    ["-chardev", "socket,id=c,path={tmp}/c.sock,server=x"],
    ["-chardev", "file,id=c"],
    ["-chardev", "null,id=1c"],
    ["-chardev", "null,id=c,foo=1"],
    ["-chardev", "null,id=c,to=on"],
    ["-chardev", "null,id=c", "-chardev", "null,id=c"],
    ["-mon", "foo"],
    ["-mon", "chardev=x"],
    ["-mon", "mode=control"],
    ["-mon", "chardev=c,mode=foo", "-chardev", "null,id=c"],
    ["-mon", "chardev=c,foo=1", "-chardev", "null,id=c"],
    ["-incoming", "foo"],
    ["-incoming", "tcp:127.0.0.1"],
    ["-incoming", "defer", "-incoming", "foo"],
    ["-global", "foo"],
    ["-global", "foo=1"],
    ["-global", "foo.bar"],
    ["-accel", "foo"],
    ["-accel", "qtest"],
    ["-accel", "tcg,foo=1"],
    ["-accel", "kvm,foo=1"],
    ["-accel", "tcg,thread=foo"],
    ["-accel", "tcg,tb-size=x"],
    ["-accel", "tcg", "-machine", "none,accel=tcg"],
    ["-enable-kvm", "-accel", "tcg"],
    ["-name", "foo,debug-threads=x"],
    ["-name", "foo,bar=1"],
    ["-uuid", "foo"],
    ["-display", "foo"],
    ["-vga", "foo"],
    ["-msg", "timestamp=x"],
    ["-rtc", "foo=1"],
    ["-m", "foo", "-version"],
    ["-m", "256,maxmem=foo"],
    ["-cpu", "foo"],
    ["-cpu", "foo", "-mon", "chardev=x"],
    ["-cpu", "foo", "-machine", "memory-backend=nope"],
    ["-cpu", "host", "-incoming", "foo"],
    ["-cpu", "max,foo=on", "-machine", "memory-backend=nope"],
    ["-cpu", "qemu64"],
    ["-chardev", "stdio,id=c", "-monitor", "stdio"],
    ["-name", "vm1", "-msg", "guest-name=on", "-object", "memory-backend-ram,id=z,size=0"],
    ["-msg", "guest-name=on,timestamp=on", "-name", "vm1", "-accel", "foo"],
    ["-msg", "guest-name=on", "-global", "foo", "-name", "vm1"],
    ["-m", "0x10", "-serial", "file:"],
    ["-msg", "timestamp", "-chardev", "socket,id=c,host=127.0.0.1"],
    ["-msg", "timestamp=on", "-global", "foo"],
    ["-global", "foo", "-msg", "timestamp=on", "-qmp", "foo"],
    ["-msg", "timestamp=on", "-m", "foo"],
    ["-object", "memory-backend-file,id=m,size=1M,mem-path={tmp}/r,policy=bind"],
    ["-machine", "none,foo=1", "-chardev", "socket,id=d"],
    ["-chardev", "socket,id=d", "-machine", "foo"],
    ["-qmp", "unix:", "-vga", "foo"],
    ["-daemonize", "-qmp", "stdio", "-machine", "none,x=1"],
    ["-qtest", "foo", "-machine", "none,x=1"],
    ["-accel", "foo", "-accel", "foo"],
    ["-accel", "foo", "-accel", "tcg,foo=1"],
    ["-machine", "accel=foo:bar"],
    ["-vga", "std", "-incoming", "foo"],
    ["-vga", "std", "-mon", "chardev=x"],
    ["-vga", "std", "-machine", "memory-backend=nope"],
    ["-"],
    ["--"],
    ["---m", "1"],
    ["-machine", "none,,"],
    ["-machine", "none,,,accel=tcg"],
    ["-m", ",256"],
    ["-m", "256,,slots=2"],
    ["-m", "256,foo=1,slots=x"],
    ["-m", "256,slots=x,foo=1"],
    ["-object", ",memory-backend-ram"],
    ["-object", "memory-backend-ram,,id=m"],
    ["-chardev", ",id=c"],
    ["-chardev", "null,id=c,to=x,foo=1"],
    ["-chardev", "null,id=c,foo=1,to=x"],
    ["-smp", "2"],
    ["-smp", "cpus=2,foo=1"],
    ["-smp", "2,sockets=x"],
    ["-smp", "x", "-vga", "foo"],
    ["-smp", "2", "-machine", "none,x=1"],
    ["-daemonize", "-qmp", "stdio"],
    ["-daemonize", "-monitor", "stdio"],
    ["-daemonize", "-chardev", "stdio,id=c"],
    ["-daemonize", "-serial", "stdio"],
    ["-daemonize", "-qmp", "stdio", "-machine", "foo"],
    ["-incoming", "fd:x"],
    ["-incoming", "unix:"],
    ["-incoming", "fd:x", "-machine", "memory-backend=nope"],
    ["-qtest", "foo"],
    ["-qtest", "foo", "-accel", "foo"],
    ["-qtest", "foo", "-object", "memory-backend-ram,id=z,size=0"],
    ["-msg", "foo=1"],
    ["-name"],
    ["-display", "none,foo=1"],
    ["-sandbox", "foo"],
    ["-rtc", "base=foo", "-machine", "foo"],
    ["-rtc", "clock=foo"],
    # Cross-option order: the first error QEMU meets wins.
    ["-machine", "foo", "-vga", "foo"],
    ["-vga", "foo", "-machine", "none,x=1"],
    ["-machine", "none,x=1", "-m", "256,slots=2"],
    ["-m", "256,slots=2", "-accel", "foo"],
    ["-accel", "foo", "-object", "memory-backend-ram,id=z,size=0"],
    ["-object", "memory-backend-ram,id=z,size=0", "-mon", "chardev=x"],
    ["-mon", "chardev=x", "-serial", "chardev:x"],
    ["-serial", "chardev:x", "-machine", "memory-backend=nope"],
    ["-machine", "memory-backend=nope", "-incoming", "foo"],
]

# Command lines QEMU accepts; migemu must accept them too.
GOOD_LINES: list[list[str]] = [
    ["-m", "256M", "-object", FILE_BE.replace("1M", "256M"), "-machine", "memory-backend=m"],
    ["-object", RAM, "-machine", "memory-backend=m"],
    ["-m", "0", "-object", RAM, "-machine", "memory-backend=m"],
    ["-m", "1.5G"],
    ["-m", "size=300,slots=2,maxmem=1G"],
    ["-m", "0x10"],
    ["-m", "0x10M"],
    ["-m", "256,maxmem=1G"],
    ["-object", RAM + ",size=0x1k", "-msg", "timestamp=on", "-m", "0x10", "-vga", "std"],
    ["-accel", "foo", "-accel", "tcg"],
    ["-accel", "bar", "-accel", "kvm", "-accel", "foo"],
    ["-machine", "accel=foo:tcg"],
    ["-machine", "none,", "-m", "256,", "-chardev", "null,id=c,", "-name", "a,,b"],
    ["-m", "256,slots=0,maxmem=1G"],
    ["-vga", "std"],
    ["-nographic"],
    ["-incoming", "fd:99"],
    ["-incoming", "tcp:127.0.0.1:0,to=5"],
    ["-name", ",,x", "-S", "-S"],
    ["-rtc", "base=2006-06-17,clock=vm,driftfix=slew"],
    ["-object", "memory-backend-ram,id=m,size=0x100k"],
    ["-object", RAM + ",share,noprealloc"],
    ["-object", RAM + ",size=2M,share=yes"],
    ["-object", "qom-type=memory-backend-ram,id=m,size=1M"],
    ["-machine", "none,dump-guest-core=y,accel=tcg"],
    ["-machine", "type=none", "-S", "-no-user-config", "-no-shutdown"],
    ["-chardev", "socket,id=c,path={tmp}/c.sock,server,nowait", "-mon", "c,mode=control"],
    ["-chardev", "null,id=c", "-mon", "chardev=c,mode=control,pretty=on"],
    ["-chardev", "null,id=c", "-serial", "chardev:c"],
    ["-serial", "none", "-serial", "null"],
    ["-qmp", "unix:{tmp}/q2.sock,server,nowait"],
    ["-monitor", "none"],
    ["-incoming", "defer"],
    ["-incoming", "tcp:127.0.0.1:0"],
    ["-global", "migration.multifd-channels=4"],
    ["-global", "driver=migration,property=multifd-channels,value=4"],
    ["-accel", "tcg", "-accel", "kvm"],
    ["-accel", "tcg,thread=single"],
    ["-name", "vm1,debug-threads=on", "-uuid", "12345678-1234-1234-1234-123456789abc"],
    ["-msg", "timestamp=on", "-sandbox", "on", "-L", "/nonexistent", "-vga", "none"],
]


def _fill(line: list[str], tmp: Path) -> list[str]:
    return [word.replace("{tmp}", str(tmp)) for word in line]


def _run_qemu(args: list[str]) -> tuple[int | None, str, str]:
    """(exit status or None if still running at the deadline, stdout, stderr)."""
    proc = subprocess.Popen(
        ["qemu-system-x86_64", *args],
        executable=QEMU,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, 9)
        out, err = proc.communicate()
        return None, out, err


_STAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{15}Z ", re.MULTILINE)
NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _unstamp(text: str) -> str:
    """-msg timestamp=on puts the wall-clock time on lines; compare them without it."""
    return _STAMP.sub("<time> ", text)


def _ours(args: list[str]) -> tuple[int, str]:
    try:
        parse_command_line([OUR_PROG, *args])
    except CmdlineError as err:
        return err.exit_code, _unstamp(err.stderr_text(NOW))
    return 0, ""


@pytest.mark.parametrize("line", BAD_LINES, ids=lambda line: " ".join(line))
def test_bad_line_matches_qemu(line: list[str], tmp_path: Path) -> None:
    args = BASE + _fill(line, tmp_path)
    status, out, err = _run_qemu(args)
    assert status is not None, f"QEMU accepted {line}"
    our_status, our_err = _ours(args)
    expected = _unstamp(err.rstrip("\n").replace("qemu-system-x86_64:", f"{OUR_PROG}:"))
    if status == 0:  # -version and friends: not an error
        assert our_status == 0
        return
    assert our_status == status
    assert our_err.splitlines()[0] == expected.splitlines()[0]
    assert our_err == expected


@pytest.mark.parametrize("line", GOOD_LINES, ids=lambda line: " ".join(line))
def test_good_line_accepted_by_both(line: list[str], tmp_path: Path) -> None:
    args = BASE + _fill(line, tmp_path) + ["-qmp", "stdio"]
    proc = subprocess.Popen(
        ["qemu-system-x86_64", *args],
        executable=QEMU,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        greeting = proc.stdout.readline()  # written when the monitor opens, before machine init
        assert greeting.startswith('{"QMP"'), (greeting, proc.stderr.read() if proc.stderr else "")
        # Commands are served from the main loop only, i.e. once initialisation is over.
        proc.stdin.write('{"execute": "qmp_capabilities"}\n{"execute": "query-status"}\n')
        proc.stdin.flush()
        assert proc.stdout.readline().startswith('{"return"')
        assert '"status"' in proc.stdout.readline()
    finally:
        os.kill(proc.pid, 9)
        _, err = proc.communicate()
    config = parse_command_line([OUR_PROG, *args])
    assert config.prog_name == OUR_PROG
    expected = _unstamp(err.rstrip("\n").replace("qemu-system-x86_64:", f"{OUR_PROG}:"))
    assert _unstamp(config.warnings_text(NOW)) == expected


def _ours_exit(args: list[str]) -> CmdlineExit:
    with pytest.raises(CmdlineExit) as info:
        parse_command_line([OUR_PROG, *args])
    return info.value


def test_machine_help_lists_qemus_pc_and_none_machines() -> None:
    status, out, _ = _run_qemu(["-machine", "help"])
    assert status == 0
    unsupported = ("microvm", "isapc", "x-remote")
    expected = [line for line in out.splitlines() if not line.startswith(unsupported)]
    ours = _ours_exit(["-machine", "help"])
    assert ours.exit_code == 0
    assert ours.text.splitlines() == expected


def test_accel_help_matches_qemu() -> None:
    status, out, _ = _run_qemu(["-accel", "help"])
    assert (status, out.rstrip("\n")) == (0, _ours_exit(["-accel", "help"]).text)


def test_version_first_line_shape_matches_qemu() -> None:
    status, out, _ = _run_qemu(["-version"])
    theirs, ours = out.splitlines(), _ours_exit(["-version"]).text.splitlines()
    assert status == 0 and len(theirs) == len(ours) == 2
    assert theirs[0].split(" (")[0] == ours[0].split(" (")[0]
    assert theirs[1] == ours[1]


def test_cpu_models_match_qemu() -> None:
    from migemu.emulator.cmdline.parser import CPU_MODELS

    status, out, _ = _run_qemu(["-cpu", "help"])
    assert status == 0
    assert {line.split()[1] for line in out.splitlines() if line.startswith("x86 ")} == CPU_MODELS
