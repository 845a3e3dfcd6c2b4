"""VMConfig: what a QEMU-style command line asks for, parsed and typed.

Part of the emulator layer. The parser (`parser.py`) builds this tree and nothing else; the
VM is built from it elsewhere. All nodes are frozen dataclasses holding tuples, so a config
can be shared and compared. Sizes are in bytes. Raw option text is kept where migemu does
not interpret an option (`-cpu`, `-smp`, `-drive`, ...), so nothing given is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from migemu.emulator.cmdline.libvirt_options import DeviceConfig, ObjectConfig
    from migemu.emulator.dashboard.options import DashboardOptions

MIB = 1 << 20

ChardevBackend = str  # "socket" | "stdio" | "file" | "null" | another QEMU char driver
MonitorMode = Literal["control", "readline"]
IncomingKind = Literal["defer", "tcp", "unix", "exec", "fd", "rdma"]


@dataclass(frozen=True)
class MachineConfig:
    type: str  # canonical QEMU name: "none", "pc-i440fx-7.2", "pc-q35-7.2", ...
    alias: str | None  # "pc" / "q35" when given by alias
    memory_backend: str | None  # id of a MemoryBackendConfig
    accel: tuple[str, ...]  # from "-machine accel=a:b" or -enable-kvm; empty if not given
    properties: tuple[tuple[str, str], ...]  # every other machine property, as given


@dataclass(frozen=True)
class MemoryConfig:
    size: int | None  # bytes, aligned up to 8 KiB; None when -m absent or 0 (machine default)
    slots: int | None
    maxmem: int | None


@dataclass(frozen=True)
class MemoryBackendConfig:
    qom_type: Literal["memory-backend-file", "memory-backend-ram"]
    id: str
    size: int  # bytes
    mem_path: str | None  # memory-backend-file only
    share: bool
    properties: tuple[tuple[str, str], ...]  # all properties as given (incl. the above)


@dataclass(frozen=True)
class ChardevConfig:
    id: str
    backend: ChardevBackend
    path: str | None = None  # socket (unix) or file
    host: str | None = None  # socket (tcp)
    port: str | None = None  # socket (tcp); kept as text, resolved when binding
    server: bool = False
    wait: bool = True  # meaningful for server sockets only
    options: tuple[tuple[str, str], ...] = ()  # everything as given


@dataclass(frozen=True)
class MonitorConfig:
    chardev: str  # id of a ChardevConfig
    mode: MonitorMode
    pretty: bool


@dataclass(frozen=True)
class SerialConfig:
    spec: str  # as given
    chardev: str | None  # id of a ChardevConfig; None for "none"


@dataclass(frozen=True)
class IncomingConfig:
    uri: str  # as given
    kind: IncomingKind
    host: str | None = None
    port: str | None = None
    path: str | None = None
    command: str | None = None  # exec:


@dataclass(frozen=True)
class GlobalProperty:
    driver: str
    property: str
    value: str


@dataclass(frozen=True)
class AccelConfig:
    name: Literal["kvm", "tcg"]
    properties: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class GuestWorkload:
    """migemu-only `-migemu-guest`: what the emulated guest does to its RAM."""

    kind: Literal["idle", "dirty", "sweep"] = "idle"
    rate: int | None = None  # pages dirtied per second ("dirty")
    seed: int | None = None
    properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AddFdConfig:
    """``-add-fd fd=N,set=S[,opaque=TEXT]``: an inherited descriptor for fd set S."""

    fd: int
    set: int
    opaque: str | None = None


@dataclass(frozen=True)
class TlsObjectConfig:
    """-object tls-creds-x509|tls-creds-psk|tls-creds-anon|authz-simple (migration/tls.py)."""

    qom_type: str
    id: str
    properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VMConfig:
    prog_name: str  # basename of argv[0], the prefix of every message
    machine: MachineConfig
    memory: MemoryConfig
    memory_backends: tuple[MemoryBackendConfig, ...] = ()
    tls_objects: tuple[TlsObjectConfig, ...] = ()
    chardevs: tuple[ChardevConfig, ...] = ()  # includes those made for -qmp/-monitor/-serial
    monitors: tuple[MonitorConfig, ...] = ()  # -qmp, -monitor and -mon, in order
    serials: tuple[SerialConfig, ...] = ()
    incoming: IncomingConfig | None = None  # the last -incoming
    add_fds: tuple[AddFdConfig, ...] = ()  # -add-fd, in order
    globals: tuple[GlobalProperty, ...] = ()
    accels: tuple[AccelConfig, ...] = ()  # -accel options, in order
    accelerator: str = "tcg"  # the one QEMU would use: the first valid of -accel / accel=
    name: str | None = None
    process_name: str | None = None
    debug_threads: bool = False
    uuid: str | None = None  # canonical lower-case form
    start_paused: bool = False  # -S
    nodefaults: bool = False
    no_user_config: bool = False
    no_shutdown: bool = False
    display: str | None = None  # "none", "gtk", ... as given in -display
    nographic: bool = False
    vga: str | None = None
    qmp_pretty: bool = False  # -qmp-pretty (applies to -qmp monitors)
    daemonize: bool = False
    pidfile: str | None = None
    qtest: str | None = None  # chardev spec of -qtest
    qtest_log: str | None = None
    msg_timestamp: bool = False
    msg_guest_name: bool = False
    log_items: str | None = None  # -d
    log_file: str | None = None  # -D
    trace: tuple[str, ...] = ()
    data_dirs: tuple[str, ...] = ()  # -L
    sandbox: str | None = None
    rtc: str | None = None
    smp: str | None = None
    cpu: str | None = None
    drives: tuple[tuple[tuple[str, str], ...], ...] = ()  # -drive option pairs
    disk_images: tuple[str, ...] = ()  # bare arguments (QEMU's hda)
    guest: GuestWorkload = field(default_factory=GuestWorkload)
    # libvirt's options, kept as given (cmdline/libvirt_options.py)
    devices: tuple[DeviceConfig, ...] = ()
    objects: tuple[ObjectConfig, ...] = ()  # -object secret
    audiodevs: tuple[tuple[tuple[str, str], ...], ...] = ()
    overcommit: tuple[tuple[str, str], ...] = ()
    boot: str | None = None
    no_acpi: bool = False
    dashboard: DashboardOptions | None = None  # migemu-only -dashboard HOST:PORT[,...]
    migemu_faults: tuple[str, ...] = ()  # migemu-only -migemu-fault SPEC, raw
    warnings: tuple[str, ...] = ()  # full stderr lines QEMU would print and go on
    warning_timestamps: tuple[bool, ...] = ()  # per warning: printed after -msg timestamp=on

    def warnings_text(self, now: datetime | None = None) -> str:
        """The warnings as QEMU prints them; `now` stamps those after -msg timestamp=on."""
        from .parser import stamp_lines  # the one place that knows QEMU's stamp format

        stamps = self.warning_timestamps or (False,) * len(self.warnings)
        return "\n".join(
            stamp_lines(text, self.prog_name, now if stamped else None)
            for text, stamped in zip(self.warnings, stamps, strict=True)
        )

    def memory_backend(self) -> MemoryBackendConfig | None:
        """The backend named by -machine memory-backend=, if any."""
        for backend in self.memory_backends:
            if backend.id == self.machine.memory_backend:
                return backend
        return None

    def ram_size(self) -> int:
        """Guest RAM in bytes: -m, else the backend's size, else the machine's default."""
        if self.memory.size is not None:
            return self.memory.size
        backend = self.memory_backend()
        if backend is not None:
            return backend.size
        return 0 if self.machine.type == "none" else 128 * MIB
