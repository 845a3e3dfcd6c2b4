"""The ``migemu`` command: a ``qemu-system-x86_64``-style command line -> a running machine.

Parses the command line (``cmdline``), maps guest RAM, builds the ``Machine`` and serves its
monitors until it shuts down (``runtime``). Errors are printed the way QEMU prints them
(``<prog>: <message>`` on stderr, exit status 1). ``-daemonize`` forks once the listeners
exist, as QEMU does, so that a parent that waits for the command sees sockets ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from migemu.emulator.cmdline import (
    CmdlineError,
    CmdlineExit,
    GlobalProperty,
    MemoryBackendConfig,
    VMConfig,
    parse_command_line,
)
from migemu.emulator.machine import Machine, MachineOptions
from migemu.emulator.migration.capabilities import apply_global, default_capabilities
from migemu.emulator.migration.parameters import default_parameters
from migemu.emulator.migration.settings import SettingsError
from migemu.emulator.qmp.server import SocketSpec
from migemu.emulator.ram import GuestRAM, RAMBlock, RAMError, map_anonymous, map_file
from migemu.emulator.runtime import Service, serve
from migemu.emulator.startup import StartupError
from migemu.qapi.errors import QMPError

# Modules with ``services_for(config, machine) -> list[Service]``: what runs beside the QMP
# monitors (HMP consoles, the qtest socket, the dashboard), each built from the command line.
SERVICE_PROVIDERS: tuple[tuple[str, Callable[[VMConfig], bool]], ...] = (
    # (module, does this command line need it?): a module is imported only when needed,
    # so that a plain QMP-only migemu starts fast.
    ("migemu.emulator.qtest.service", lambda c: c.qtest is not None),  # before any monitor
    ("migemu.emulator.boot", lambda c: bool(c.serials or c.drives or c.disk_images)),
    ("migemu.emulator.hmp.server", lambda c: any(m.mode == "readline" for m in c.monitors)),
    ("migemu.emulator.dashboard.provider", lambda c: c.dashboard is not None),
    ("migemu.emulator.commands.faults", lambda c: bool(c.migemu_faults)),
    ("migemu.emulator.commands.probe", lambda c: True),  # libvirt's start-up queries
)
# ``migemu SUBCOMMAND ...``: tools that are not a QEMU command line, each a module with main().
SUBCOMMANDS: dict[str, str] = {"dashboard": "migemu.tools.dashboard"}
SUBCOMMANDS["demo"] = "migemu.tools.demo"
SUBCOMMANDS["bench"] = "migemu.tools.bench"
SUBCOMMANDS["soak"] = "migemu.tools.soak"

DEFAULT_RAM_MIB = {"none": 0}  # other machine types: 128 MiB, QEMU's default
PC_RAM_NAME = "pc.ram"


def build_ram(config: VMConfig) -> GuestRAM:
    """Guest RAM as QEMU lays it out: the memory backend, or ``ram``/``pc.ram`` from -m."""
    machine = config.machine
    if machine.memory_backend is not None:
        backend = next(b for b in config.memory_backends if b.id == machine.memory_backend)
        if backend.qom_type == "memory-backend-file":
            assert backend.mem_path is not None
            block = map_file(backend.id, backend.mem_path, backend.size, backend.share)
        else:
            block = map_anonymous(backend.id, backend.size)
        return GuestRAM([block])
    size = config.memory.size
    if size is None:
        size = DEFAULT_RAM_MIB.get(machine.type, 128) << 20
    if size == 0:
        return GuestRAM()
    name = "ram" if machine.type == "none" else PC_RAM_NAME
    blocks: list[RAMBlock] = [map_anonymous(name, size)]
    return GuestRAM(blocks)


def monitor_specs(config: VMConfig) -> list[SocketSpec]:
    """The QMP monitors' sockets, in command-line order."""
    chardevs = {c.id: c for c in config.chardevs}
    specs = []
    for mon in config.monitors:
        chardev = chardevs[mon.chardev]
        if mon.mode != "control":
            continue  # HMP (readline) monitors are a service: see SERVICE_PROVIDERS
        if chardev.backend == "stdio":
            specs.append(SocketSpec(stdio=True))
            continue
        if chardev.backend != "socket":
            raise StartupError(
                f"-chardev {chardev.backend},id={chardev.id}: QMP over a '{chardev.backend}' "
                "chardev is not supported; use a unix or tcp socket"
            )
        port = int(chardev.port) if chardev.port is not None else None
        fd = dict(chardev.options).get("fd")  # libvirt passes a listening socket
        if fd is not None and not fd.isdigit():
            raise StartupError(f"-chardev socket,id={chardev.id},fd={fd}: migemu takes fd=N only")
        specs.append(
            SocketSpec(
                label=chardev.id,
                fd=int(fd) if fd is not None else None,
                path=chardev.path,
                host=chardev.host,
                port=port,
                server=chardev.server,
                wait=chardev.server and chardev.wait,
            )
        )
    return specs


def memdev_info(backend: MemoryBackendConfig) -> dict[str, object]:
    """query-memdev's entry for a memory backend (schema member order; QEMU's defaults)."""
    return {
        "id": backend.id,
        "size": backend.size,
        "merge": True,
        "dump": True,
        "prealloc": False,
        "share": backend.share,
        "reserve": True,
        "host-nodes": [],
        "policy": "default",
    }


def guest_spec(config: VMConfig) -> str:
    """The ``-migemu-guest`` spec text (``idle`` when not given)."""
    guest = config.guest
    return ",".join([guest.kind, *(f"{k}={v}" for k, v in guest.properties if k != "type")])


def smp_cpus(smp: str | None) -> int:
    """The CPU count of ``-smp N`` / ``-smp cpus=N,...`` (1 when absent)."""
    if not smp:
        return 1
    for part in smp.split(","):
        key, _, value = part.rpartition("=")
        if key in ("", "cpus") and value.isdigit():
            return max(1, int(value))
    return 1


def machine_options(config: VMConfig) -> MachineOptions:
    options = MachineOptions(
        machine_type=config.machine.type,
        name=config.name,
        start_paused=config.start_paused,
        incoming=config.incoming.uri if config.incoming is not None else None,
        globals=[(g.driver, g.property, g.value) for g in config.globals],
        prog_name=config.prog_name,
        cpus=0 if config.machine.type == "none" else smp_cpus(config.smp),
        guest=guest_spec(config),
        memdevs=[memdev_info(b) for b in config.memory_backends],
    )
    if config.uuid is not None:
        options.uuid = config.uuid
        options.uuid_set = True
    return options


def add_tls_objects(machine: Machine, config: VMConfig) -> None:
    """The -object tls-creds-*/authz-simple of the command line (checked by the parser)."""
    from migemu.emulator.migration.tls import TlsError

    for obj in config.tls_objects:
        try:
            machine.tls_objects.add(obj.qom_type, obj.id, dict(obj.properties))
        except TlsError as err:
            raise QMPError(err.desc) from err


def daemonize() -> Callable[[], None]:
    """Fork; the parent exits 0 once the child calls the returned function (or 1 if it dies)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        ok = os.read(read_fd, 1) == b"\0"
        os._exit(0 if ok else 1)
    os.close(read_fd)
    os.setsid()

    def ready() -> None:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.write(write_fd, b"\0")
        os.close(write_fd)

    return ready


def check_global(prop: GlobalProperty) -> str | None:
    """QEMU's error for one ``-global migration.*`` (parsed where QEMU applies globals)."""
    if prop.driver != "migration":
        return None
    try:
        apply_global(default_parameters(), default_capabilities(), prop.property, prop.value)
    except QMPError as err:
        return err.desc
    return None


def run(config: VMConfig) -> int:
    prog = config.prog_name
    if config.warnings:
        print(config.warnings_text(datetime.now(UTC)), file=sys.stderr)
    if os.environ.get("MIGEMU_DEFLATE"):  # a migemu-only choice: fail now, not mid-migration
        from migemu.multifd.methods.deflate import DeflateBackendError, check_selected

        try:
            check_selected()
        except DeflateBackendError as err:
            print(f"{prog}: {err}", file=sys.stderr)
            return 1
    notify_parent = daemonize() if config.daemonize else None
    try:
        specs = monitor_specs(config)
        ram = build_ram(config)
    except (StartupError, RAMError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    try:
        machine = Machine(machine_options(config), ram)
        add_tls_objects(machine, config)
    except (SettingsError, QMPError) as err:
        ram.close()
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    # -add-fd: a close-on-exec duplicate joins the set, then the inherited one is closed.
    for entry in config.add_fds:
        dup = fcntl.fcntl(entry.fd, fcntl.F_DUPFD_CLOEXEC, 0)
        machine.fdsets.add(dup, entry.set, entry.opaque)
    for entry in config.add_fds:
        with contextlib.suppress(OSError):
            os.close(entry.fd)
    pidfile = config.pidfile

    def ready() -> None:
        if pidfile is not None:
            with open(pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        if notify_parent is not None:
            notify_parent()

    try:
        services: list[Service] = []
        for provider, needed in SERVICE_PROVIDERS:
            if needed(config):
                services.extend(importlib.import_module(provider).services_for(config, machine))
    except StartupError as err:
        machine.close()
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(serve(machine, specs, ready, services))
    except OSError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    finally:
        if pidfile is not None and os.path.exists(pidfile):
            os.unlink(pidfile)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    if len(args) > 1 and args[1] in SUBCOMMANDS:
        return int(importlib.import_module(SUBCOMMANDS[args[1]]).main(args[2:]) or 0)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        config = parse_command_line(args, check_global=check_global)
    except CmdlineError as err:
        print(err.stderr_text(datetime.now(UTC)), file=sys.stderr)
        return err.exit_code
    except CmdlineExit as err:
        print(err.text, end="" if err.text.endswith("\n") else "\n")
        return err.exit_code
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
