"""Unit tests of the command-line parser: good lines field by field, sizes, syntax, texts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migemu.emulator.cmdline import (
    OPTIONS,
    CmdlineError,
    CmdlineExit,
    SizeError,
    parse_command_line,
    parse_size,
)
from migemu.emulator.cmdline.qemuopts import OptsSyntaxError, split_opts

MIB = 1 << 20
TRANSCRIPTS = Path("/work/shared/reference/transcripts")
PROG = "qemu-system-x86_64"


def parse(*args: str):
    return parse_command_line([PROG, *args])


def error_of(*args: str) -> CmdlineError:
    with pytest.raises(CmdlineError) as info:
        parse(*args)
    return info.value


def _transcript_argvs() -> list[list[str]]:
    argvs = []
    for path in sorted(TRANSCRIPTS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("dir") == "note" and "argv" in record.get("data", {}):
                argvs.append(record["data"]["argv"])
    return argvs


TRANSCRIPT_ARGVS = _transcript_argvs()


@pytest.mark.skipif(not TRANSCRIPT_ARGVS, reason="shared transcripts not present")
@pytest.mark.parametrize("argv", TRANSCRIPT_ARGVS, ids=lambda a: a[-1])
def test_transcript_command_lines(argv: list[str], tmp_path: Path) -> None:
    placeholders = {"IMAGE_256M", "DST_RAM_", "SOCK_"}
    filled = [
        re.sub(r"\b(IMAGE_256M|DST_RAM_\S+?|SOCK_\S+?)(?=,|$)", lambda m: str(tmp_path / m[1]), w)
        for w in argv
    ]
    assert not any(p in w and str(tmp_path) not in w for w in filled for p in placeholders)
    config = parse_command_line(filled)
    assert config.prog_name == "qemu-system-x86_64"
    assert config.machine.type == "none"
    assert config.machine.memory_backend == "mem0"
    assert config.nodefaults and config.display == "none"
    assert config.memory.size == 256 * MIB
    assert config.ram_size() == 256 * MIB
    (backend,) = config.memory_backends
    assert backend == config.memory_backend()
    assert backend.qom_type == "memory-backend-file"
    assert (backend.id, backend.size) == ("mem0", 256 * MIB)
    assert backend.mem_path is not None and backend.mem_path.startswith(str(tmp_path))
    is_destination = "-incoming" in argv
    assert backend.share is is_destination
    (monitor,) = config.monitors
    assert (monitor.mode, monitor.pretty) == ("control", False)
    (chardev,) = config.chardevs
    assert chardev.id == monitor.chardev
    assert chardev.backend == "socket"
    assert chardev.path is not None and chardev.path.startswith(str(tmp_path / "SOCK_"))
    assert chardev.server is True and chardev.wait is False
    if is_destination:
        assert config.incoming is not None and config.incoming.kind == "defer"
    else:
        assert config.incoming is None
    assert config.warnings == ()


def test_prog_name_from_argv0_and_override() -> None:
    err = error_of("-foo")
    assert err.message == "qemu-system-x86_64: -foo: invalid option"
    assert err.exit_code == 1
    with pytest.raises(CmdlineError) as info:
        parse_command_line(["/opt/bin/x-system-x86_64", "-m"])
    assert info.value.message == "x-system-x86_64: -m: requires an argument"
    with pytest.raises(CmdlineError) as info:
        parse_command_line(["whatever", "-foo"], prog="migemu")
    assert info.value.message == "migemu: -foo: invalid option"


def test_version_text_keeps_qemus_shape() -> None:
    for flag in ("-version", "--version"):
        with pytest.raises(CmdlineExit) as info:
            parse(flag)
        assert not isinstance(info.value, CmdlineError)
        assert info.value.exit_code == 0 and info.value.stream == "stdout"
        first, second = info.value.text.splitlines()
        assert re.fullmatch(r"QEMU emulator version 7\.2\.22 \(migemu [0-9.]+\)", first)
        assert second.startswith("Copyright (c) 2003-2022 Fabrice Bellard")


def test_help_lists_migemu_options() -> None:
    for flag in ("-h", "--help", "-help"):
        with pytest.raises(CmdlineExit) as info:
            parse_command_line(["x-system-x86_64", flag])
        text = info.value.text
        assert info.value.exit_code == 0
        assert "usage: x-system-x86_64 [options]" in text
        assert "-migemu-guest" in text and "-dashboard" in text


def test_options_are_scanned_before_any_is_parsed() -> None:
    assert error_of("-m", "foo", "-bar").message == f"{PROG}: -bar: invalid option"
    assert error_of("-version", "-bar").message == f"{PROG}: -bar: invalid option"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256M", 256 * MIB),
        ("1.5G", 3 << 29),
        ("256", 256),
        ("256k", 256 << 10),
        ("0x100000", 1 << 20),
        (" 256M", 256 * MIB),
        ("0.5k", 512),
        ("0.1k", 102),
        ("1.0", 1),
        ("1.", 1),
        ("1.k", 1024),
        ("3B", 3),
        ("+1", 1),
        ("08", 8),
        ("0X10", 16),
        ("18446744073709551615", (1 << 64) - 1),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text)[0] == value


@pytest.mark.parametrize(
    "text", ["1e3", "256M.", "1.5", "0x1.8M", "0x", "", "-1", "1 M", "1MiB", ".5k", "1.5b", "1 "]
)
def test_bad_sizes(text: str) -> None:
    with pytest.raises(SizeError):
        parse_size(text)


def test_size_overflow_is_out_of_range() -> None:
    with pytest.raises(SizeError) as info:
        parse_size("16E")
    assert info.value.out_of_range


def test_split_opts() -> None:
    pairs = split_opts("a,,b,x=1,,2,flag,noother,x=3", "name")
    assert [(p.key, p.value) for p in pairs] == [
        ("name", "a,b"),
        ("x", "1,2"),
        ("flag", "on"),
        ("other", "off"),
        ("x", "3"),
    ]
    with pytest.raises(OptsSyntaxError, match="Expected '=' after parameter 'usb'"):
        split_opts("none,usb", "type", keyval=True)


def test_memory_options() -> None:
    assert parse("-m", "1.5G").memory.size == 3 << 29
    assert parse("-m", "256").memory.size == 256 * MIB
    assert parse("-m", "1b").memory.size == 8192
    assert parse("-m", "0").memory.size is None
    config = parse("-m", "size=300,slots=2,maxmem=1G")
    assert (config.memory.size, config.memory.slots, config.memory.maxmem) == (
        300 * MIB,
        2,
        1 << 30,
    )
    assert parse("-m", "300,size=200").memory.size == 200 * MIB
    hexed = parse("-m", "0x10")
    assert hexed.memory.size == 16 * MIB
    assert hexed.warnings == (
        f"{PROG}: warning: Using a multiplier suffix on hex numbers is deprecated: 0x10M",
    )


def test_memory_backend_without_m_sets_ram_size() -> None:
    config = parse("-object", "memory-backend-ram,id=m,size=128M", "-machine", "memory-backend=m")
    assert config.memory.size is None
    assert config.ram_size() == 128 * MIB
    assert parse("-machine", "none").ram_size() == 0
    assert parse("-machine", "pc").ram_size() == 128 * MIB


def test_machine() -> None:
    config = parse("-machine", "none", "-M", "memory-backend=x,accel=kvm:tcg", "-object",
                   "memory-backend-ram,id=x,size=1M")  # fmt: skip
    assert config.machine.type == "none"
    assert config.machine.accel == ("kvm", "tcg")
    pc = parse("-M", "pc,usb=off").machine
    assert (pc.type, pc.alias, pc.properties) == ("pc-i440fx-7.2", "pc", (("usb", "off"),))
    assert parse("-machine", "q35").machine.type == "pc-q35-7.2"
    assert parse("-machine", "type=pc-q35-7.2").machine.alias is None
    assert parse("-enable-kvm").machine.accel == ("kvm",)


def test_monitors_and_chardevs() -> None:
    config = parse(
        "-qmp", "tcp:127.0.0.1:4444,server=on,wait=off",
        "-qmp-pretty", "unix:/tmp/q,server,nowait",
        "-monitor", "stdio",
        "-chardev", "socket,id=c1,host=localhost,port=5555,server=on,wait=off",
        "-mon", "chardev=c1,mode=control,pretty=on",
        "-chardev", "file,id=log,path=/tmp/log",
        "-serial", "chardev:log",
    )  # fmt: skip
    kinds = [(m.chardev, m.mode, m.pretty) for m in config.monitors]
    assert kinds == [
        ("compat_monitor0", "control", False),
        ("compat_monitor1", "control", True),
        ("compat_monitor2", "readline", False),
        ("c1", "control", True),
    ]
    chardevs = {c.id: c for c in config.chardevs}
    tcp = chardevs["compat_monitor0"]
    assert (tcp.backend, tcp.host, tcp.port, tcp.server, tcp.wait) == (
        "socket",
        "127.0.0.1",
        "4444",
        True,
        False,
    )
    unix = chardevs["compat_monitor1"]
    assert (unix.path, unix.server, unix.wait) == ("/tmp/q", True, False)
    assert chardevs["compat_monitor2"].backend == "stdio"
    assert (chardevs["c1"].host, chardevs["c1"].port) == ("localhost", "5555")
    assert chardevs["log"].path == "/tmp/log"
    assert config.serials[0].chardev == "log"
    assert parse("-monitor", "none").monitors == ()
    assert parse("-qmp", "stdio").chardevs[0].backend == "stdio"


def test_short_form_booleans_warn_like_qemu() -> None:
    config = parse("-chardev", "socket,id=c,path=/tmp/s,server,nowait")
    assert config.warnings == (
        f"{PROG}: -chardev socket,id=c,path=/tmp/s,server,nowait: warning: short-form boolean "
        "option 'server' deprecated\nPlease use server=on instead",
        f"{PROG}: -chardev socket,id=c,path=/tmp/s,server,nowait: warning: short-form boolean "
        "option 'nowait' deprecated\nPlease use wait=off instead",
    )
    # The legacy -qmp spelling is silent in QEMU 7.2.
    assert parse("-qmp", "unix:/tmp/s,server,nowait").warnings == ()


@pytest.mark.parametrize(
    ("uri", "fields"),
    [
        ("defer", ("defer", None, None, None, None)),
        ("tcp:127.0.0.1:4444", ("tcp", "127.0.0.1", "4444", None, None)),
        ("tcp::4444", ("tcp", "", "4444", None, None)),
        ("tcp:[::1]:4444", ("tcp", "::1", "4444", None, None)),
        ("unix:/tmp/mig.sock", ("unix", None, None, "/tmp/mig.sock", None)),
        ("exec:cat /tmp/x", ("exec", None, None, None, "cat /tmp/x")),
    ],
)
def test_incoming(uri: str, fields: tuple) -> None:
    inc = parse("-incoming", uri).incoming
    assert inc is not None and inc.uri == uri
    assert (inc.kind, inc.host, inc.port, inc.path, inc.command) == fields


def test_globals_accels_and_stored_options() -> None:
    config = parse(
        "-global", "migration.multifd-channels=4",
        "-global", "driver=migration,property=x-foo,value=a,,b",
        "-accel", "kvm", "-accel", "tcg,thread=single",
        "-name", "vm1,process=proc,debug-threads=on",
        "-uuid", "12345678-1234-1234-1234-123456789ABC",
        "-S", "-no-shutdown", "-no-user-config", "-nographic", "-daemonize",
        "-pidfile", "/tmp/pid", "-qtest", "unix:/tmp/qt", "-qtest-log", "/dev/null",
        "-msg", "timestamp=on", "-d", "guest_errors", "-D", "/tmp/log", "-trace", "migration_*",
        "-L", "/usr/share/qemu", "-sandbox", "on", "-rtc", "base=utc", "-smp", "2",
        "-cpu", "host", "-vga", "none", "-drive", "file=/tmp/d,format=raw,if=none",
    )  # fmt: skip
    assert [(g.driver, g.property, g.value) for g in config.globals] == [
        ("migration", "multifd-channels", "4"),
        ("migration", "x-foo", "a,b"),
    ]
    assert [(a.name, a.properties) for a in config.accels] == [
        ("kvm", ()),
        ("tcg", (("thread", "single"),)),
    ]
    assert (config.name, config.process_name, config.debug_threads) == ("vm1", "proc", True)
    assert config.uuid == "12345678-1234-1234-1234-123456789abc"
    assert config.start_paused and config.no_shutdown and config.no_user_config
    assert config.nographic and config.daemonize and config.pidfile == "/tmp/pid"
    assert (config.qtest, config.qtest_log) == ("unix:/tmp/qt", "/dev/null")
    assert config.msg_timestamp and config.log_items == "guest_errors"
    assert (config.log_file, config.trace, config.data_dirs) == (
        "/tmp/log",
        ("migration_*",),
        ("/usr/share/qemu",),
    )
    assert (config.sandbox, config.rtc, config.smp, config.cpu, config.vga) == (
        "on",
        "base=utc",
        "2",
        "host",
        "none",
    )
    assert config.drives == ((("file", "/tmp/d"), ("format", "raw"), ("if", "none")),)


def test_accelerator_choice() -> None:
    assert parse().accelerator == "tcg"
    assert parse("-enable-kvm").accelerator == "kvm"
    config = parse("-accel", "foo", "-accel", "kvm", "-accel", "tcg")
    assert config.accelerator == "kvm"
    assert [a.name for a in config.accels] == ["foo", "kvm", "tcg"]
    assert config.warnings == (
        f"{PROG}: -accel foo: invalid accelerator foo",
        f"{PROG}: falling back to KVM",
    )


def test_global_check_hook_runs_in_qemus_order() -> None:
    def check(prop) -> str | None:
        if prop.driver == "migration" and prop.property != "multifd-channels":
            name = f"{prop.driver}.{prop.property}"
            return f"can't apply global {name}={prop.value}: Property '{name}' not found"
        return None

    argv = [PROG, "-global", "migration.foo=1", "-object", "memory-backend-ram,id=z,size=0"]
    with pytest.raises(CmdlineError) as info:
        parse_command_line(argv, check_global=check)
    assert info.value.message == (
        f"{PROG}: can't apply global migration.foo=1: Property 'migration.foo' not found"
    )
    with pytest.raises(CmdlineError) as info:
        parse_command_line([*argv, "-accel", "foo"], check_global=check)
    assert info.value.message == f"{PROG}: -accel foo: invalid accelerator foo"
    ok = parse_command_line([PROG, "-global", "migration.multifd-channels=4"], check_global=check)
    assert ok.globals[0].value == "4"


def test_serial_mon_muxes_an_hmp_monitor() -> None:
    config = parse("-serial", "mon:stdio")
    (chardev,) = config.chardevs
    assert chardev.backend == "stdio" and ("mux", "on") in chardev.options
    assert config.serials[0].chardev == chardev.id
    assert [(m.chardev, m.mode) for m in config.monitors] == [(chardev.id, "readline")]


def test_msg_timestamp_marks_later_lines() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    with pytest.raises(CmdlineError) as info:
        parse("-chardev", "null,id=c,mux", "-msg", "timestamp=on", "-m", "x")
    text = info.value.stderr_text(now)
    assert text.splitlines()[0].startswith(f"{PROG}: -chardev null,id=c,mux: warning")
    assert text.splitlines()[-3] == (
        f"2026-01-02T03:04:05.678901Z {PROG}: -m x: Parameter 'size' expects a non-negative "
        "number below 2^64"
    )
    assert info.value.stderr_text().splitlines()[-3].startswith(f"{PROG}: -m x")


def test_migemu_options() -> None:
    from migemu.emulator.dashboard import DashboardOptions

    config = parse("-migemu-guest", "dirty,rate=1000,seed=7", "-dashboard", "127.0.0.1:8080")
    assert (config.guest.kind, config.guest.rate, config.guest.seed) == ("dirty", 1000, 7)
    assert config.dashboard == DashboardOptions("127.0.0.1", 8080)
    assert parse().guest.kind == "idle"
    assert parse("-migemu-guest", "sweep").guest.kind == "sweep"
    assert error_of("-migemu-guest", "busy").message == (
        f"{PROG}: -migemu-guest busy: Parameter 'type' does not accept value 'busy'"
    )
    assert error_of("-migemu-guest", "dirty,rate=x").message == (
        f"{PROG}: -migemu-guest dirty,rate=x: Parameter 'rate' expects uint64"
    )
    assert error_of("-dashboard", "nope").message == (
        f"{PROG}: -dashboard nope: error parsing address 'nope'"
    )
    config = parse("-dashboard", "127.0.0.1:0,writable=on,url-file=/tmp/u")
    assert config.dashboard == DashboardOptions("127.0.0.1", 0, True, "/tmp/u")
    assert error_of("-dashboard", "127.0.0.1:0,colour=red").message == (
        f"{PROG}: -dashboard 127.0.0.1:0,colour=red: Invalid parameter 'colour'"
    )


def test_unsupported_qemu_options_are_refused_clearly() -> None:
    assert error_of("-netdev", "user,id=n0").message == (
        f"{PROG}: -netdev user,id=n0: option not supported by migemu"
    )
    assert error_of("-object", "iothread,id=io").message == (
        f"{PROG}: -object iothread,id=io: object type 'iothread' is not supported by migemu"
    )


def test_option_table_is_consistent() -> None:
    for name, spec in OPTIONS.items():
        assert spec.name == name
        assert callable(spec.handler)


_WORDS = st.sampled_from(
    sorted("-" + n for n in OPTIONS)
    + ["-foo", "none", "256M", "foo", "memory-backend-ram,id=m,size=1M", "defer", "tcp::1",
       "unix:/x,server,nowait", "chardev=c", "null,id=c", ",", ",,", "=", "a=b,c", "0x", "1.5"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_WORDS, st.text(max_size=12)), max_size=8))
def test_any_argv_gives_config_or_clean_exit(words: list[str]) -> None:
    try:
        parse_command_line([PROG, *words])
    except CmdlineExit as exit_:
        assert exit_.text
        assert exit_.exit_code in (0, 1)
