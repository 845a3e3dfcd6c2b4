"""The `qemu-system-x86_64` command line, parsed into a VMConfig with QEMU 7.2's errors.

Part of the emulator layer; pure (no files, sockets or processes are touched). QEMU reads its
command line in three steps, and so does this module:

1. a scan of every argument for unknown options and missing arguments;
2. each option in order, checking its own syntax (`OPTIONS` maps a name to a handler);
3. checks across options, in the order QEMU makes them (`_check_*` in `_finish`).

Every message was taken from a real QEMU 7.2 run; see tests/emulator/test_cmdline_differential.py.
Failures that need the host (binding sockets, opening files) are left to whoever builds the VM.
"""

from __future__ import annotations

import os
import re
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from migemu.emulator.migration.tls import PROPERTIES as TLS_OBJECT_PROPERTIES

from . import libvirt_options
from .config import (
    MIB,
    AccelConfig,
    AddFdConfig,
    ChardevConfig,
    GlobalProperty,
    GuestWorkload,
    IncomingConfig,
    MachineConfig,
    MemoryBackendConfig,
    MemoryConfig,
    MonitorConfig,
    SerialConfig,
    TlsObjectConfig,
    VMConfig,
)
from .qemuopts import (
    OptPair,
    OptsSyntaxError,
    last_values,
    parse_bool,
    short_form_warnings,
    split_opts,
)
from .sizes import UINT64_MAX, SizeError, parse_size

QEMU_VERSION = "7.2.22"
MIGEMU_VERSION = "0.1.0"
COPYRIGHT = "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers"
RAM_ALIGN = 8192  # QEMU rounds -m up to this

SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)
ID_HINT = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


class CmdlineExit(Exception):
    """The command line ends the program: print `text` to `stream`, exit with `exit_code`."""

    stream = "stdout"

    def __init__(self, text: str, exit_code: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.exit_code = exit_code


class CmdlineError(CmdlineExit):
    """A command line QEMU refuses; `message` is its stderr text (may span lines)."""

    stream = "stderr"

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message, exit_code)
        self.message = message
        self.warnings: tuple[str, ...] = ()  # what QEMU would have printed before the error
        # Which of (*warnings, message) come after "-msg timestamp=on" (see stamp_lines).
        self.timestamped: tuple[bool, ...] = ()
        self.prog = message.split(": ", 1)[0]

    def stderr_text(self, now: datetime | None = None) -> str:
        """Everything QEMU prints on stderr for this line, warnings first.

        With `now`, lines QEMU would timestamp (-msg timestamp=on) get the timestamp.
        """
        entries = (*self.warnings, self.message)
        stamps = self.timestamped or (False,) * len(entries)
        return "\n".join(
            stamp_lines(text, self.prog, now if stamped else None)
            for text, stamped in zip(entries, stamps, strict=True)
        )


def stamp_lines(text: str, prog: str, now: datetime | None) -> str:
    """QEMU's -msg timestamp=on: each "prog: ..." line starts with an ISO-8601 UTC time."""
    if now is None:
        return text
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ")
    return "\n".join(stamp + line if f"{prog}: " in line else line for line in text.split("\n"))


# ---------------------------------------------------------------------------------------------
# Machine types and their properties (from `-machine help` and `-machine TYPE,help`)

_MACHINE_ALIASES = {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}
_PC_VERSIONS = (
    "7.2 7.1 7.0 6.2 6.1 6.0 5.2 5.1 5.0 4.2 4.1 4.0 3.1 3.0 2.9 2.8 2.7 2.6 2.5 2.4 2.12 2.11 2.10"
).split()
MACHINE_TYPES = frozenset(
    ["none"]
    + [f"pc-i440fx-{v}" for v in _PC_VERSIONS + "2.3 2.2 2.1 2.0 1.7 1.6 1.5 1.4".split()]
    + [f"pc-q35-{v}" for v in _PC_VERSIONS + ["4.0.1"]]
)
_COMMON_MACHINE_PROPS = {
    "append": "str",
    "boot": "str",
    "confidential-guest-support": "str",
    "dt-compatible": "str",
    "dtb": "str",
    "dump-guest-core": "bool",
    "dumpdtb": "str",
    "firmware": "str",
    "graphics": "bool",
    "initrd": "str",
    "kernel": "str",
    "mem-merge": "bool",
    "memory-backend": "str",
    "memory-encryption": "str",
    "memory": "str",
    "phandle-start": "str",
    "smp": "str",
    "suppress-vmdesc": "bool",
    "usb": "bool",
}
_PC_MACHINE_PROPS = {
    **_COMMON_MACHINE_PROPS,
    "acpi": "str",
    "bus-lock-ratelimit": "str",
    "default-bus-bypass-iommu": "bool",
    "hpet": "bool",
    "i8042": "bool",
    "max-fw-size": "str",
    "max-ram-below-4g": "str",
    "pic": "str",
    "pit": "str",
    "sata": "bool",
    "sgx-epc": "str",
    "smbios-entry-point-type": "str",
    "smbus": "bool",
    "smm": "str",
    "vmport": "str",
    "x-oem-id": "str",
    "x-oem-table-id": "str",
}
# Accepted by -machine itself rather than by the machine type.
_MACHINE_OPTION_KEYS = frozenset({"type", "accel", "kernel-irqchip", "kvm-shadow-mem"})

ACCELS = ("tcg", "kvm")
_ACCEL_PROPS = {
    "tcg": frozenset({"thread", "tb-size", "split-wx"}),
    "kvm": frozenset(
        {"kernel-irqchip", "kvm-shadow-mem", "dirty-ring-size", "notify-vmexit", "notify-window"}
    ),
}

VGA_TYPES = frozenset({"std", "cirrus", "vmware", "qxl", "xenfb", "tcx", "cg3", "virtio", "none"})
DISPLAY_TYPES = frozenset(
    {"none", "gtk", "sdl", "vnc", "curses", "egl-headless", "dbus", "spice-app", "default"}
)
CHAR_DRIVERS = frozenset(
    "null socket udp msmouse wctablet vc ringbuf memory file pipe pty stdio serial tty "
    "parallel parport spicevmc spiceport braille testdev dbus qemu-vdagent".split()
)
# Every key -chardev accepts, whatever the backend (QEMU checks per backend later).
_CHARDEV_KEYS = frozenset(
    "backend path host port fd localaddr localport to ipv4 ipv6 wait server delay nodelay "
    "reconnect telnet tn3270 websocket width height cols rows mux signal name debug size "
    "chardev append logfile logappend mouse clipboard tight abstract tls-creds tls-authz id".split()
)
_CHARDEV_NUMBER_KEYS = frozenset({"to", "reconnect", "width", "height", "cols", "rows", "debug"})
_CHARDEV_BOOL_KEYS = frozenset(
    "ipv4 ipv6 wait server delay nodelay telnet tn3270 websocket mux signal append "
    "logappend tight abstract".split()
)

# -object: property -> kind, in the order QEMU validates them.
_BACKEND_COMMON = (
    ("dump", "bool"),
    ("host-nodes", "nodes"),
    ("merge", "bool"),
    ("policy", "policy"),
    ("prealloc", "bool"),
    ("prealloc-threads", "uint"),
    ("prealloc-context", "str"),
    ("share", "bool"),
    ("reserve", "bool"),
    ("size", "size"),
    ("x-use-canonical-path-for-ramblock-id", "bool"),
)
_BACKEND_PROPS: dict[str, tuple[tuple[str, str], ...]] = {
    "memory-backend-ram": _BACKEND_COMMON,
    "memory-backend-file": _BACKEND_COMMON
    + (
        ("align", "size"),
        ("discard-data", "bool"),
        ("mem-path", "str"),
        ("pmem", "bool"),
        ("readonly", "bool"),
    ),
}
_REQUIRED_PROPS = {"memory-backend-ram": ("size",), "memory-backend-file": ("size", "mem-path")}
# Valid QEMU object types migemu does not emulate: refused with a migemu message.
OTHER_OBJECT_TYPES = frozenset(
    "authz-list authz-list-file can-bus can-host-socketcan colo-compare "
    "cryptodev-backend cryptodev-backend-builtin cryptodev-vhost-user dbus-vmstate "
    "filter-buffer filter-dump filter-mirror filter-redirector filter-replay filter-rewriter "
    "input-barrier input-linux iothread main-loop memory-backend-memfd pr-manager-helper qtest "
    "rng-builtin rng-egd rng-random secret secret_keyring sev-guest thread-context "
    "throttle-group tls-cipher-suites "
    "x-remote-object".split()
)
_HOST_MEM_POLICIES = frozenset({"default", "preferred", "bind", "interleave"})

# `-cpu help` of QEMU 7.2 (x86_64): the model names it knows.
CPU_MODELS = frozenset(
    (
        "486 486-v1 Broadwell Broadwell-IBRS Broadwell-noTSX Broadwell-noTSX-IBRS Broadwell-v1 "
        "Broadwell-v2 Broadwell-v3 Broadwell-v4 Cascadelake-Server Cascadelake-Server-noTSX "
        "Cascadelake-Server-v1 Cascadelake-Server-v2 Cascadelake-Server-v3 "
        "Cascadelake-Server-v4 Cascadelake-Server-v5 Conroe Conroe-v1 Cooperlake Cooperlake-v1 "
        "Cooperlake-v2 Denverton Denverton-v1 Denverton-v2 Denverton-v3 Dhyana Dhyana-v1 "
        "Dhyana-v2 EPYC EPYC-IBPB EPYC-Milan EPYC-Milan-v1 EPYC-Rome EPYC-Rome-v1 EPYC-Rome-v2 "
        "EPYC-v1 EPYC-v2 EPYC-v3 Haswell Haswell-IBRS Haswell-noTSX Haswell-noTSX-IBRS "
        "Haswell-v1 Haswell-v2 Haswell-v3 Haswell-v4 Icelake-Server Icelake-Server-noTSX "
        "Icelake-Server-v1 Icelake-Server-v2 Icelake-Server-v3 Icelake-Server-v4 "
        "Icelake-Server-v5 Icelake-Server-v6 IvyBridge IvyBridge-IBRS IvyBridge-v1 IvyBridge-v2 "
        "KnightsMill KnightsMill-v1 Nehalem Nehalem-IBRS Nehalem-v1 Nehalem-v2 Opteron_G1 "
        "Opteron_G1-v1 Opteron_G2 Opteron_G2-v1 Opteron_G3 Opteron_G3-v1 Opteron_G4 "
        "Opteron_G4-v1 Opteron_G5 Opteron_G5-v1 Penryn Penryn-v1 SandyBridge SandyBridge-IBRS "
        "SandyBridge-v1 SandyBridge-v2 Skylake-Client Skylake-Client-IBRS "
        "Skylake-Client-noTSX-IBRS Skylake-Client-v1 Skylake-Client-v2 Skylake-Client-v3 "
        "Skylake-Client-v4 Skylake-Server Skylake-Server-IBRS Skylake-Server-noTSX-IBRS "
        "Skylake-Server-v1 Skylake-Server-v2 Skylake-Server-v3 Skylake-Server-v4 "
        "Skylake-Server-v5 Snowridge Snowridge-v1 Snowridge-v2 Snowridge-v3 Snowridge-v4 "
        "Westmere Westmere-IBRS Westmere-v1 Westmere-v2 athlon athlon-v1 core2duo core2duo-v1 "
        "coreduo coreduo-v1 kvm32 kvm32-v1 kvm64 kvm64-v1 n270 n270-v1 pentium pentium-v1 "
        "pentium2 pentium2-v1 pentium3 pentium3-v1 phenom phenom-v1 qemu32 qemu32-v1 qemu64 "
        "qemu64-v1 base host max "
    ).split()
)

GUEST_KINDS = ("idle", "dirty", "sweep")


# ---------------------------------------------------------------------------------------------
# The builder: what steps 2 and 3 accumulate


@dataclass
class _Loc:
    """Where an option came from, for the "prog: -opt arg: " prefix."""

    text: str  # "-m 256" or "-S"


@dataclass
class _Builder:
    prog: str
    machine_pairs: list[OptPair] = field(default_factory=list)
    enable_kvm: bool = False
    mem_opts: dict[str, str] = field(default_factory=dict)
    mem_loc: _Loc | None = None
    backends: list[tuple[MemoryBackendConfig, _Loc]] = field(default_factory=list)
    tls_objects: list[tuple[TlsObjectConfig, _Loc]] = field(default_factory=list)
    chardevs: list[tuple[ChardevConfig, _Loc]] = field(default_factory=list)
    monitors: list[tuple[MonitorConfig, _Loc]] = field(default_factory=list)
    serials: list[tuple[SerialConfig, _Loc]] = field(default_factory=list)
    incoming: tuple[str, _Loc] | None = None
    add_fds: list[tuple[dict[str, str], _Loc]] = field(default_factory=list)
    globals: list[GlobalProperty] = field(default_factory=list)
    accels: list[tuple[AccelConfig, _Loc]] = field(default_factory=list)
    compat_monitors: int = 0
    serial_count: int = 0
    values: dict[str, object] = field(default_factory=dict)  # plain VMConfig fields
    trace: list[str] = field(default_factory=list)
    data_dirs: list[str] = field(default_factory=list)
    drives: list[tuple[tuple[str, str], ...]] = field(default_factory=list)
    disk_images: list[str] = field(default_factory=list)
    guest: GuestWorkload = field(default_factory=GuestWorkload)
    warnings: list[str] = field(default_factory=list)
    stamped: list[bool] = field(default_factory=list)  # per warning: after -msg timestamp=on

    def prefix(self) -> str:
        """ "prog", or "guest prog" once -msg guest-name=on and -name are given."""
        name = self.values.get("name")
        if self.values.get("msg_guest_name") and isinstance(name, str):
            return f"{name} {self.prog}"
        return self.prog

    def timestamps_on(self) -> bool:
        return bool(self.values.get("msg_timestamp"))

    def add_warning(self, text: str) -> None:
        self.warnings.append(text)
        self.stamped.append(self.timestamps_on())

    def fail(self, message: str, loc: _Loc | None = None) -> CmdlineError:
        where = f"{loc.text}: " if loc is not None else ""
        return CmdlineError(f"{self.prefix()}: {where}{message}")

    def warn(self, message: str, loc: _Loc | None = None) -> None:
        where = f"{loc.text}: " if loc is not None else ""
        self.add_warning(f"{self.prefix()}: {where}{message}")

    def split(
        self, text: str, loc: _Loc, implied: str | None, keyval: bool = False, warn: bool = True
    ) -> list[OptPair]:
        try:
            pairs = split_opts(text, implied, keyval)
        except OptsSyntaxError as err:
            raise self.fail(str(err), loc) from err
        for message in short_form_warnings(pairs) if warn else ():
            self.warn(message, loc)
        return pairs

    def check_keys(self, pairs: list[OptPair], allowed: frozenset[str], loc: _Loc) -> None:
        for pair in pairs:
            if pair.key not in allowed:
                raise self.fail(f"Invalid parameter '{pair.key}'", loc)

    def bool_value(self, name: str, value: str, loc: _Loc | None) -> bool:
        try:
            return parse_bool(name, value)
        except OptsSyntaxError as err:
            raise self.fail(str(err), loc) from err

    def check_id(self, value: str, loc: _Loc) -> None:
        if not _ID_RE.fullmatch(value):
            raise self.fail(f"Parameter 'id' expects an identifier\n{ID_HINT}", loc)


Handler = Callable[[_Builder, str, _Loc], None]


# ---------------------------------------------------------------------------------------------
# Step 2 handlers, one per option


def _flag(name: str) -> Handler:
    def handler(b: _Builder, arg: str, loc: _Loc) -> None:
        b.values[name] = True

    return handler


def _store(name: str) -> Handler:
    def handler(b: _Builder, arg: str, loc: _Loc) -> None:
        b.values[name] = arg

    return handler


def _opt_machine(b: _Builder, arg: str, loc: _Loc) -> None:
    if arg == "help":
        raise CmdlineExit(machine_help_text())
    b.machine_pairs.extend(b.split(arg, loc, "type", keyval=True))


def _opt_enable_kvm(b: _Builder, arg: str, loc: _Loc) -> None:
    b.enable_kvm = True


def _hex_suffix_warning(b: _Builder, value: str, loc: _Loc | None) -> None:
    b.warn(f"warning: Using a multiplier suffix on hex numbers is deprecated: {value}", loc)


def _qemuopts_size(b: _Builder, name: str, value: str, loc: _Loc) -> None:
    try:
        if parse_size(value)[1]:
            _hex_suffix_warning(b, value, loc)
    except SizeError as err:
        if err.out_of_range:
            raise b.fail(f"Value '{value}' is out of range for parameter '{name}'", loc) from err
        raise b.fail(
            f"Parameter '{name}' expects a non-negative number below 2^64\n{SIZE_HINT}", loc
        ) from err


def _qemuopts_number(b: _Builder, name: str, value: str, loc: _Loc) -> None:
    if not re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]+", value.strip()):
        raise b.fail(f"Parameter '{name}' expects a number", loc)


def _opt_m(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, "size", warn=False)
    for pair in pairs:  # QemuOpts checks element by element, warning as it goes
        b.check_keys([pair], frozenset({"size", "slots", "maxmem"}), loc)
        for message in short_form_warnings([pair]):
            b.warn(message, loc)
        if pair.key == "slots":
            _qemuopts_number(b, pair.key, pair.value, loc)
        else:
            _qemuopts_size(b, pair.key, pair.value, loc)
    b.mem_opts.update(last_values(pairs))
    b.mem_loc = loc


def _backend_prop(b: _Builder, qom_type: str, name: str, kind: str, value: str, loc: _Loc) -> None:
    if kind == "bool":
        b.bool_value(name, value, loc)
    elif kind == "size":
        try:
            if parse_size(value)[1]:
                _hex_suffix_warning(b, value, loc)
        except SizeError as err:
            raise b.fail(f"Parameter '{name}' expects a size value", loc) from err
    elif kind == "uint":
        if not value.isdigit():
            raise b.fail(f"Parameter '{name}' expects a uint64 value", loc)
    elif kind == "nodes":
        if not re.fullmatch(r"[0-9]+(-[0-9]+)?", value):
            raise b.fail(f"Parameter '{name}' expects a uint64 value or range", loc)
    elif kind == "policy" and value not in _HOST_MEM_POLICIES:
        raise b.fail(f"Parameter '{name}' does not accept value '{value}'", loc)


def _opt_object(b: _Builder, arg: str, loc: _Loc) -> None:
    if arg == "help":
        types = "".join(f"\n  {name}" for name in sorted(_BACKEND_PROPS))
        raise CmdlineExit("List of user creatable objects:" + types)
    # -- libvirt: JSON -object and -object secret (libvirt_options.py) --
    if arg.startswith("{"):
        kinds = {n: k for props in _BACKEND_PROPS.values() for n, k in props}
        values = libvirt_options.json_object_values(b, arg, loc, kinds)
    else:
        values = last_values(b.split(arg, loc, "qom-type"))
    if values.get("qom-type") == "secret":
        libvirt_options.add_secret(b, values, loc)
        return
    # -- end libvirt --
    qom_type = values.get("qom-type")
    if qom_type is None:
        raise b.fail("Parameter 'qom-type' is missing", loc)
    if qom_type in OTHER_OBJECT_TYPES:
        raise b.fail(f"object type '{qom_type}' is not supported by migemu", loc)
    if qom_type in TLS_OBJECT_PROPERTIES:
        _tls_object(b, qom_type, values, loc)
        return
    if qom_type not in _BACKEND_PROPS:
        raise b.fail(f"Parameter 'qom-type' does not accept value '{qom_type}'", loc)
    object_id = values.get("id")
    if object_id is None:
        raise b.fail("Parameter 'id' is missing", loc)
    b.check_id(object_id, loc)
    props = _BACKEND_PROPS[qom_type]
    for name, kind in props:
        if name in values:
            _backend_prop(b, qom_type, name, kind, values[name], loc)
        elif name in _REQUIRED_PROPS[qom_type]:
            raise b.fail(f"Parameter '{name}' is missing", loc)
    known = {name for name, _ in props} | {"qom-type", "id"}
    for key in values:
        if key not in known:
            raise b.fail(f"Invalid parameter '{key}'", loc)
    if any(backend.id == object_id for backend, _ in b.backends):
        raise b.fail(f"Duplicate ID '{object_id}' for object", loc)
    backend = MemoryBackendConfig(
        qom_type=qom_type,  # type: ignore[arg-type]
        id=object_id,
        size=parse_size(values["size"])[0],
        mem_path=values.get("mem-path"),
        share=parse_bool("share", values["share"]) if "share" in values else False,
        properties=tuple((k, v) for k, v in values.items() if k not in ("qom-type", "id")),
    )
    b.backends.append((backend, loc))


def _tls_object(b: _Builder, qom_type: str, values: dict[str, str], loc: _Loc) -> None:
    """-object tls-creds-*/authz-simple: checked and created as QEMU does at startup (files
    are read then: a missing one ends the process with QEMU's text)."""
    from migemu.emulator.migration.tls import TlsError, create_object

    object_id = values.get("id")
    if object_id is None:
        raise b.fail("Parameter 'id' is missing", loc)
    b.check_id(object_id, loc)
    known = set(TLS_OBJECT_PROPERTIES[qom_type]) | {"qom-type", "id"}
    for key in values:
        if key not in known:
            raise b.fail(f"Invalid parameter '{key}'", loc)
    if any(o.id == object_id for o, _ in b.tls_objects) or any(
        c.id == object_id for c, _ in b.backends
    ):
        raise b.fail(
            f"attempt to add duplicate property '{object_id}' to object (type 'container')", loc
        )
    if qom_type == "authz-simple" and "identity" not in values:
        raise b.fail("Parameter 'identity' is missing", loc)
    props = tuple((k, v) for k, v in values.items() if k not in ("qom-type", "id"))
    try:
        create_object(qom_type, object_id, dict(props))
    except TlsError as err:  # QEMU creates them after the option parsing: no location
        raise b.fail(err.desc) from err
    b.tls_objects.append((TlsObjectConfig(qom_type, object_id, props), loc))


def _add_chardev(b: _Builder, chardev: ChardevConfig, loc: _Loc) -> None:
    if any(c.id == chardev.id for c, _ in b.chardevs):
        raise b.fail(f"Duplicate ID '{chardev.id}' for chardev", loc)
    b.chardevs.append((chardev, loc))


def _check_chardev_values(b: _Builder, pairs: list[OptPair], loc: _Loc, warn: bool) -> None:
    for pair in pairs:  # QemuOpts checks element by element
        key, value = pair.key, pair.value
        b.check_keys([pair], _CHARDEV_KEYS, loc)
        for message in short_form_warnings([pair]) if warn else ():
            b.warn(message, loc)
        if key in _CHARDEV_NUMBER_KEYS:
            _qemuopts_number(b, key, value, loc)
        elif key in _CHARDEV_BOOL_KEYS:
            b.bool_value(key, value, loc)
        elif key == "size":
            _qemuopts_size(b, key, value, loc)


def _chardev_from_values(values: dict[str, str]) -> ChardevConfig:
    backend = values["backend"]
    return ChardevConfig(
        id=values["id"],
        backend=backend,
        path=values.get("path"),
        host=values.get("host"),
        port=values.get("port"),
        server=parse_bool("server", values["server"]) if "server" in values else False,
        wait=parse_bool("wait", values["wait"]) if "wait" in values else True,
        options=tuple(values.items()),
    )


def _opt_chardev(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, "backend", warn=False)
    _check_chardev_values(b, pairs, loc, warn=True)
    values = last_values(pairs)
    if "id" not in values:
        raise b.fail("chardev: no id specified", loc)
    b.check_id(values["id"], loc)
    if "backend" not in values:
        raise b.fail(f'chardev: "{values["id"]}" missing backend', loc)
    if values["backend"] not in CHAR_DRIVERS:
        raise b.fail(f"'{values['backend']}' is not a valid char driver name", loc)
    _add_chardev(b, _chardev_from_values(values), loc)


def _legacy_chardev(b: _Builder, spec: str, chardev_id: str, loc: _Loc) -> ChardevConfig | None:
    """A -qmp/-monitor/-serial device spec ("unix:PATH,server=on", "stdio", ...).

    Returns None when the spec is not a character device QEMU knows; the caller words the error.
    """
    values: dict[str, str] = {"id": chardev_id}
    head, comma, rest = spec.partition(",")
    if spec in ("null", "stdio", "vc", "pty", "msmouse", "wctablet", "braille", "testdev"):
        values["backend"] = spec
    elif spec.startswith("file:"):
        values.update(backend="file", path=spec[5:])
    elif spec.startswith("pipe:"):
        values.update(backend="pipe", path=spec[5:])
    elif head.startswith("unix:") or head.startswith("tcp:") or head.startswith("telnet:"):
        if head.startswith("unix:"):
            values.update(backend="socket", path=head[5:])
        else:
            scheme, _, address = head.partition(":")
            host, colon, port = address.rpartition(":")
            if not colon:
                raise b.fail(f"parse error: {spec}", loc)
            values.update(backend="socket", host=host, port=port)
            if scheme == "telnet":
                values["telnet"] = "on"
        if comma:
            pairs = b.split(rest, loc, None, warn=False)  # QEMU 7.2 is silent here
            try:
                _check_chardev_values(b, pairs, loc, warn=False)
            except CmdlineError as err:
                raise CmdlineError(
                    f"{err.message}\n{b.prefix()}: {loc.text}: parse error: {spec}"
                ) from err
            values.update(last_values(pairs))
    elif spec.startswith("/dev/"):
        values.update(backend="tty", path=spec)
    else:
        return None
    return _chardev_from_values(values)


def _monitor_option(mode: str, pretty: bool) -> Handler:
    def handler(b: _Builder, arg: str, loc: _Loc) -> None:
        if mode == "readline" and arg == "none":
            return
        chardev_id = f"compat_monitor{b.compat_monitors}"
        chardev = _legacy_chardev(b, arg, chardev_id, loc)
        if chardev is None:
            raise CmdlineError(
                f"{b.prefix()}: {loc.text}: '{arg}' is not a valid char driver\n"
                f"{b.prefix()}: {loc.text}: parse error: {arg}"
            )
        b.compat_monitors += 1
        _add_chardev(b, chardev, loc)
        b.monitors.append((MonitorConfig(chardev_id, mode, pretty), loc))  # type: ignore[arg-type]

    return handler


def _opt_mon(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, "chardev")
    b.check_keys(pairs, frozenset({"chardev", "mode", "pretty", "id"}), loc)
    values = last_values(pairs)
    mode = values.get("mode", "readline")
    if mode not in ("readline", "control"):
        raise b.fail(f"Parameter 'mode' does not accept value '{mode}'", loc)
    pretty = b.bool_value("pretty", values["pretty"], loc) if "pretty" in values else False
    if "chardev" not in values:
        raise b.fail("Parameter 'chardev' is missing", loc)
    b.monitors.append((MonitorConfig(values["chardev"], mode, pretty), loc))  # type: ignore[arg-type]


def _opt_serial(b: _Builder, arg: str, loc: _Loc) -> None:
    if arg == "none":
        b.serials.append((SerialConfig(arg, None), loc))
        return
    if arg.startswith("chardev:"):
        b.serials.append((SerialConfig(arg, arg[8:]), loc))
        return
    chardev_id = f"serial{b.serial_count}"
    muxed = arg.startswith("mon:")
    chardev = _legacy_chardev(b, arg[4:] if muxed else arg, chardev_id, loc)
    if chardev is None:
        raise CmdlineError(
            f"{b.prefix()}: {loc.text}: '{arg}' is not a valid char driver\n"
            f"{b.prefix()}: {loc.text}: could not connect serial device to character "
            f"backend '{arg}'"
        )
    b.serial_count += 1
    if muxed:  # "mon:DEV": the serial port and an HMP monitor share DEV
        chardev = replace(chardev, options=(*chardev.options, ("mux", "on")))
    _add_chardev(b, chardev, loc)
    b.serials.append((SerialConfig(arg, chardev_id), loc))
    if muxed:
        b.monitors.append((MonitorConfig(chardev_id, "readline", False), loc))


def _opt_incoming(b: _Builder, arg: str, loc: _Loc) -> None:
    b.incoming = (arg, loc)


def _opt_global(b: _Builder, arg: str, loc: _Loc) -> None:
    first = arg.split(",", 1)[0]
    key, eq, value = first.partition("=")
    driver, dot, prop = key.partition(".")
    if eq and dot and driver and "," not in arg.replace(",,", ""):
        b.globals.append(GlobalProperty(driver, prop, value.replace(",,", ",")))
        return
    pairs = b.split(arg, loc, None)
    b.check_keys(pairs, frozenset({"driver", "property", "value"}), loc)
    values = last_values(pairs)
    b.globals.append(
        GlobalProperty(
            values.get("driver", ""), values.get("property", ""), values.get("value", "")
        )
    )


def _opt_accel(b: _Builder, arg: str, loc: _Loc) -> None:
    if arg == "help":
        raise CmdlineExit("Accelerators supported in QEMU binary:\n" + "\n".join(ACCELS))
    pairs = b.split(arg, loc, "accel")
    values = last_values(pairs)
    name = values.pop("accel", "")
    b.accels.append((AccelConfig(name, tuple(values.items())), loc))  # type: ignore[arg-type]


def _opt_add_fd(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, None)
    for pair in pairs:
        b.check_keys([pair], frozenset({"fd", "set", "opaque"}), loc)
        if pair.key in ("fd", "set"):
            _qemuopts_number(b, pair.key, pair.value, loc)
    b.add_fds.append((last_values(pairs), loc))


def _check_add_fds(b: _Builder) -> tuple[AddFdConfig, ...]:
    """parse_add_fd, run early in qemu_init: the descriptor must be inherited (no
    FD_CLOEXEC: every descriptor QEMU opens itself has it), not stdio, with a set."""
    out = []
    for values, loc in b.add_fds:
        fd = int(values["fd"], 0) if "fd" in values else -1
        fdset = int(values["set"], 0) if "set" in values else -1
        if fd < 0:
            raise b.fail("fd option is required and must be non-negative", loc)
        if fd <= 2:
            raise b.fail("fd cannot be a standard I/O stream", loc)
        try:
            inherited = os.get_inheritable(fd)
        except OSError:
            inherited = False
        if not inherited:
            raise b.fail("fd is not valid or already in use", loc)
        if fdset < 0:
            raise b.fail("set option is required and must be non-negative", loc)
        out.append(AddFdConfig(fd, fdset, values.get("opaque")))
    return tuple(out)


def _opt_name(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, "guest")
    b.check_keys(pairs, frozenset({"guest", "process", "debug-threads"}), loc)
    values = last_values(pairs)
    if "debug-threads" in values:
        b.values["debug_threads"] = b.bool_value("debug-threads", values["debug-threads"], loc)
    if "guest" in values:
        b.values["name"] = values["guest"]
    if "process" in values:
        b.values["process_name"] = values["process"]


def _opt_uuid(b: _Builder, arg: str, loc: _Loc) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", arg):
        raise b.fail("failed to parse UUID string: wrong format", loc)
    b.values["uuid"] = str(uuid_mod.UUID(arg))


def _opt_display(b: _Builder, arg: str, loc: _Loc) -> None:
    kind = arg.split(",", 1)[0].partition("=")[0] if arg.startswith("vnc=") else arg.split(",")[0]
    if kind not in DISPLAY_TYPES:
        raise b.fail(f"Parameter 'type' does not accept value '{kind}'", loc)
    if kind == "none":
        for pair in b.split(arg, loc, "type", keyval=True)[1:]:
            if pair.key != "gl":
                raise b.fail(f"Parameter '{pair.key}' is unexpected", loc)
    b.values["display"] = arg


def _opt_msg(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, None)
    b.check_keys(pairs, frozenset({"timestamp", "guest-name"}), loc)
    for key, value in last_values(pairs).items():
        b.values["msg_" + key.replace("-", "_")] = b.bool_value(key, value, loc)


_RTC_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2})?")


def _opt_rtc(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, None)
    b.check_keys(pairs, frozenset({"base", "clock", "driftfix"}), loc)
    values = last_values(pairs)
    base = values.get("base", "utc")
    if base not in ("utc", "localtime") and not _RTC_DATE.fullmatch(base):
        raise b.fail(
            "invalid datetime format\nvalid formats: '2006-06-17T16:01:21' or '2006-06-17'"
        )
    for key, allowed in (("clock", ("host", "rt", "vm")), ("driftfix", ("none", "slew"))):
        if key in values and values[key] not in allowed:
            raise b.fail(f"invalid option value '{values[key]}'")
    b.values["rtc"] = arg


def _opt_sandbox(b: _Builder, arg: str, loc: _Loc) -> None:
    values = last_values(b.split(arg, loc, "enable"))
    b.bool_value("enable", values.get("enable", ""), loc)
    b.values["sandbox"] = arg


def _opt_trace(b: _Builder, arg: str, loc: _Loc) -> None:
    b.trace.append(arg)


def _opt_data_dir(b: _Builder, arg: str, loc: _Loc) -> None:
    b.data_dirs.append(arg)


def _opt_drive(b: _Builder, arg: str, loc: _Loc) -> None:
    b.drives.append(tuple((p.key, p.value) for p in b.split(arg, loc, None)))


def _opt_version(b: _Builder, arg: str, loc: _Loc) -> None:
    raise CmdlineExit(version_text())


def _opt_help(b: _Builder, arg: str, loc: _Loc) -> None:
    raise CmdlineExit(help_text(b.prog))


def _opt_unsupported(b: _Builder, arg: str, loc: _Loc) -> None:
    raise b.fail("option not supported by migemu", loc)


def _opt_guest(b: _Builder, arg: str, loc: _Loc) -> None:
    pairs = b.split(arg, loc, "type", keyval=True)
    b.check_keys(pairs, frozenset({"type", "rate", "seed"}), loc)
    values = last_values(pairs)
    kind = values.get("type", "idle")
    if kind not in GUEST_KINDS:
        raise b.fail(f"Parameter 'type' does not accept value '{kind}'", loc)
    numbers: dict[str, int] = {}
    for key in ("rate", "seed"):
        if key in values:
            if not values[key].isdigit():
                raise b.fail(f"Parameter '{key}' expects uint64", loc)
            numbers[key] = int(values[key])
    b.guest = GuestWorkload(
        kind=kind,  # type: ignore[arg-type]
        rate=numbers.get("rate"),
        seed=numbers.get("seed"),
        properties=tuple(values.items()),
    )


def _opt_fault(b: _Builder, arg: str, loc: _Loc) -> None:
    from migemu.emulator.migration.faults import FaultSpecError, parse_spec

    try:
        parse_spec(arg)
    except FaultSpecError as err:
        raise b.fail(str(err), loc) from err
    b.values["migemu_faults"] = (*b.values.get("migemu_faults", ()), arg)  # type: ignore[misc]


def _opt_dashboard(b: _Builder, arg: str, loc: _Loc) -> None:
    from migemu.emulator.dashboard.options import DashboardOptionError, parse_dashboard_option

    try:
        b.values["dashboard"] = parse_dashboard_option(arg)
    except DashboardOptionError as err:
        raise b.fail(str(err), loc) from err


@dataclass(frozen=True)
class OptionSpec:
    name: str
    takes_arg: bool
    handler: Handler
    help: str = ""  # one line for -h; empty: not listed


_OPTION_LIST: tuple[OptionSpec, ...] = (
    OptionSpec("h", False, _opt_help, "display this help and exit"),
    OptionSpec("help", False, _opt_help),
    OptionSpec("version", False, _opt_version, "display version information and exit"),
    OptionSpec("machine", True, _opt_machine, "[type=]none|pc|q35[,memory-backend=ID,...]"),
    OptionSpec("M", True, _opt_machine),
    OptionSpec("m", True, _opt_m, "[size=]megs[,slots=n,maxmem=size]  guest RAM"),
    OptionSpec("object", True, _opt_object, "memory-backend-file|memory-backend-ram,id=ID,..."),
    OptionSpec("accel", True, _opt_accel, "[accel=]kvm|tcg[,prop=value,...]"),
    OptionSpec("enable-kvm", False, _opt_enable_kvm, "same as -machine accel=kvm"),
    OptionSpec("cpu", True, _store("cpu"), "cpu model (stored)"),
    OptionSpec("smp", True, _store("smp"), "cpu topology (stored)"),
    OptionSpec("add-fd", True, _opt_add_fd, "fd=fd,set=set[,opaque=opaque]"),
    OptionSpec("name", True, _opt_name, "string1[,process=string2][,debug-threads=on|off]"),
    OptionSpec("uuid", True, _opt_uuid, "%08x-%04x-%04x-%04x-%012x"),
    OptionSpec("S", False, _flag("start_paused"), "freeze CPU at startup"),
    OptionSpec("nodefaults", False, _flag("nodefaults"), "don't create default devices"),
    OptionSpec("no-user-config", False, _flag("no_user_config"), "ignored"),
    OptionSpec("no-shutdown", False, _flag("no_shutdown"), "stop before shutdown"),
    OptionSpec("display", True, _opt_display, "none"),
    OptionSpec("nographic", False, _flag("nographic"), "disable graphical output"),
    OptionSpec("vga", True, _store("vga"), "none"),
    OptionSpec("chardev", True, _opt_chardev, "socket|stdio|file|null,id=ID[,...]"),
    OptionSpec("qmp", True, _monitor_option("control", False), "dev  QMP monitor"),
    OptionSpec("qmp-pretty", True, _monitor_option("control", True), "dev  QMP, pretty JSON"),
    OptionSpec("monitor", True, _monitor_option("readline", False), "dev  HMP monitor"),
    OptionSpec("mon", True, _opt_mon, "[chardev=]name[,mode=readline|control][,pretty=on|off]"),
    OptionSpec("serial", True, _opt_serial, "dev  serial port"),
    OptionSpec("incoming", True, _opt_incoming, "defer|tcp:HOST:PORT|unix:PATH|exec:CMD"),
    OptionSpec("global", True, _opt_global, "driver.property=value"),
    OptionSpec("daemonize", False, _flag("daemonize"), "daemonize after initializing"),
    OptionSpec("pidfile", True, _store("pidfile"), "file  write PID to 'file'"),
    OptionSpec("qtest", True, _store("qtest")),
    OptionSpec("qtest-log", True, _store("qtest_log")),
    OptionSpec("drive", True, _opt_drive, "file=...,format=raw[,if=...] (stored)"),
    OptionSpec("msg", True, _opt_msg, "[timestamp=on|off][,guest-name=on|off]"),
    OptionSpec("d", True, _store("log_items"), "item1,...  log items (stored)"),
    OptionSpec("D", True, _store("log_file"), "logfile (stored)"),
    OptionSpec("trace", True, _opt_trace, "trace options (stored)"),
    OptionSpec("L", True, _opt_data_dir, "path (stored)"),
    OptionSpec("sandbox", True, _opt_sandbox, "on|off[,...] (stored)"),
    OptionSpec("rtc", True, _opt_rtc, "(stored)"),
    OptionSpec(
        "migemu-guest",
        True,
        _opt_guest,
        "idle|dirty[,rate=PAGES_PER_S][,seed=N]|sweep  (migemu) guest workload",
    ),
    OptionSpec(
        "dashboard",
        True,
        _opt_dashboard,
        "HOST:PORT[,writable=on][,url-file=PATH]  (migemu) serve the HTTP dashboard",
    ),
    OptionSpec("migemu-fault", True, _opt_fault, "SPEC  (migemu) inject a migration fault"),
    # -- libvirt's options (libvirt_options.py) --
    OptionSpec("device", True, libvirt_options.opt_device, "driver[,prop=value][,...] (stored)"),
    OptionSpec("audiodev", True, libvirt_options.opt_audiodev, "driver,id=ID[,...] (stored)"),
    OptionSpec("overcommit", True, libvirt_options.opt_overcommit, "mem-lock=on|off (stored)"),
    OptionSpec("boot", True, libvirt_options.opt_boot, "[strict=on|off][,...] (stored)"),
    OptionSpec("no-acpi", False, libvirt_options.opt_no_acpi, "(stored)"),
    # -- end libvirt --
)

# Real QEMU options migemu does not emulate: known (so not "invalid option"), then refused.
_UNSUPPORTED_WITH_ARG = (
    "numa set mem-path k audio fda fdb hda hdb hdc hdd cdrom "
    "blockdev mtdblock sd fsdev virtfs iscsi usbdevice spice rotate vnc acpitable smbios netdev "
    "nic net tpmdev bios pflash kernel append initrd dtb compat fw_cfg parallel debugcon "
    "gdb dfilter seed xen-domid action loadvm option-rom icount watchdog-action "
    "echr chroot runas readconfig plugin dump-vmstate"
).split()
_UNSUPPORTED_NO_ARG = (
    "mem-prealloc audio-help snapshot usb full-screen win2k-hack no-fd-bootchk no-hpet "
    "portrait singlestep preconfig s xen-attach xen-domid-restrict no-reboot only-migratable "
    "enable-sync-profile async-teardown alt-grab ctrl-grab no-quit"
).split()

OPTIONS: dict[str, OptionSpec] = {spec.name: spec for spec in _OPTION_LIST}
OPTIONS.update({n: OptionSpec(n, True, _opt_unsupported) for n in _UNSUPPORTED_WITH_ARG})
OPTIONS.update({n: OptionSpec(n, False, _opt_unsupported) for n in _UNSUPPORTED_NO_ARG})


# ---------------------------------------------------------------------------------------------
# Texts


def version_text() -> str:
    return f"QEMU emulator version {QEMU_VERSION} (migemu {MIGEMU_VERSION})\n{COPYRIGHT}"


def machine_help_text() -> str:
    """`-machine help`: QEMU's list, restricted to the machine types migemu accepts."""
    i440fx, q35 = "Standard PC (i440FX + PIIX, 1996)", "Standard PC (Q35 + ICH9, 2009)"
    rows = [("pc", f"{i440fx} (alias of pc-i440fx-7.2)"), ("pc-i440fx-7.2", f"{i440fx} (default)")]
    old_i440fx = [v for v in _PC_VERSIONS[1:] if not v.startswith("2.1")]
    old_i440fx += "2.3 2.2 2.12 2.11 2.10 2.1 2.0".split()
    rows += [(f"pc-i440fx-{v}", i440fx) for v in old_i440fx]
    rows += [(f"pc-i440fx-{v}", f"{i440fx} (deprecated)") for v in "1.7 1.6 1.5 1.4".split()]
    rows += [("q35", f"{q35} (alias of pc-q35-7.2)"), ("pc-q35-7.2", q35)]
    q35_versions = _PC_VERSIONS[1:]
    q35_versions.insert(q35_versions.index("4.0"), "4.0.1")
    rows += [(f"pc-q35-{v}", q35) for v in q35_versions]
    rows.append(("none", "empty machine"))
    return "Supported machines are:\n" + "\n".join(f"{n:<20} {d}" for n, d in rows)


def help_text(prog: str) -> str:
    lines = [version_text(), f"usage: {prog} [options]", "", "Options:"]
    for spec in _OPTION_LIST:
        if spec.help:
            lines.append(f"-{spec.name:<16}{spec.help}")
    lines += [
        "",
        "migemu emulates QEMU 7.2's QMP/HMP and live migration; other options are refused.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Steps 1-3


def _scan(prog: str, argv: list[str]) -> list[tuple[OptionSpec | None, str, str | None]]:
    """Step 1: (spec, option as typed, argument) per option; spec None for a disk image."""
    items: list[tuple[OptionSpec | None, str, str | None]] = []
    i = 1
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-"):
            items.append((None, word, None))
            continue
        name = word[2:] if word.startswith("--") else word[1:]
        spec = OPTIONS.get(name) if name else None
        if spec is None:
            raise CmdlineError(f"{prog}: {word}: invalid option")
        arg: str | None = None
        if spec.takes_arg:
            if i >= len(argv):
                raise CmdlineError(f"{prog}: {word}: requires an argument")
            arg = argv[i]
            i += 1
        items.append((spec, word, arg))
    return items


def parse_command_line(
    argv: list[str], prog: str | None = None, check_global: GlobalCheck | None = None
) -> VMConfig:
    """Parse a `qemu-system-x86_64`-style argv (argv[0] is the program).

    Raises CmdlineError for a line QEMU refuses, CmdlineExit for -version/-h.
    `prog` overrides the message prefix (default: basename of argv[0]).
    `check_global` validates one -global (e.g. the migration properties) and returns QEMU's
    message without the "prog: " prefix, e.g. "can't apply global migration.foo=1: Property
    'migration.foo' not found", or None; it is called where QEMU applies globals, so errors
    come out in QEMU's order.
    """
    prog = prog if prog is not None else os.path.basename(argv[0]) if argv else "migemu"
    b = _Builder(prog)
    for spec, word, arg in _scan(prog, argv):
        if spec is None:
            b.disk_images.append(word)
            continue
        loc = _Loc(f"{word} {arg}" if arg is not None else word)
        try:
            spec.handler(b, arg if arg is not None else "", loc)
        except CmdlineError as err:
            _attach(err, b)
            raise
    try:
        return _finish(b, check_global)
    except CmdlineError as err:
        _attach(err, b)
        raise


GlobalCheck = Callable[[GlobalProperty], str | None]


def _attach(err: CmdlineError, b: _Builder) -> None:
    err.warnings = tuple(b.warnings)
    err.timestamped = (*b.stamped, b.timestamps_on())
    err.prog = b.prog


def _finish(b: _Builder, check_global: GlobalCheck | None) -> VMConfig:
    """Step 3: checks across options, in QEMU's order."""
    add_fds = _check_add_fds(b)  # qemu_process_early_options
    machine = _check_machine(b)
    vga = b.values.get("vga")
    if isinstance(vga, str) and vga not in VGA_TYPES:
        raise b.fail(f"unknown vga type: {vga}")
    _check_chardevs(b)  # QEMU creates character devices here
    _check_machine_props(b, machine)
    _check_smp(b, machine)
    memory = _check_memory(b)
    accelerator = _check_accels(b, machine)
    if check_global is not None:
        for prop in b.globals:
            message = check_global(prop)
            if message is not None:
                raise b.fail(message)
    _check_qtest(b)
    _check_backends(b)
    chardev_ids = {c.id for c, _ in b.chardevs}
    for monitor, loc in b.monitors:
        if monitor.chardev not in chardev_ids:
            raise b.fail(f'chardev "{monitor.chardev}" not found', loc)
    chardevs = {c.id: c for c, _ in b.chardevs}
    for serial, loc in b.serials:
        tail = f"could not connect serial device to character backend '{serial.spec}'"
        if serial.chardev is not None and serial.chardev not in chardev_ids:
            raise b.fail(tail, loc)
        chardev = chardevs.get(serial.chardev or "")
        if chardev is not None and chardev.backend == "file" and chardev.path == "":
            # Opening "" fails whatever the host; QEMU opens -serial files here.
            first = b.fail("Could not open '': No such file or directory", loc).message
            raise CmdlineError(f"{first}\n{b.fail(tail, loc).message}")
    cpu = b.values.get("cpu")
    cpu_model = cpu.split(",", 1)[0] if isinstance(cpu, str) else None
    if cpu_model is not None and cpu_model not in CPU_MODELS:
        raise b.fail(f"unable to find CPU model '{cpu_model}'")
    _check_memory_backend(b, machine, memory)
    if cpu_model is not None and machine.type == "none":
        # QEMU 7.2 cannot create an x86 CPU without a PC machine around it.
        raise b.fail("apic-id property was not initialized properly")
    if isinstance(vga, str) and vga != "none" and machine.type == "none":
        b.warn(
            "warning: A -vga option was passed but this machine type does not use that option; "
            "No VGA device has been created"
        )
    incoming = _check_incoming(b)
    libvirt_options.finish(b)
    config = VMConfig(
        prog_name=b.prog,
        machine=machine,
        memory=memory,
        memory_backends=tuple(c for c, _ in b.backends),
        tls_objects=tuple(o for o, _ in b.tls_objects),
        chardevs=tuple(c for c, _ in b.chardevs),
        monitors=tuple(m for m, _ in b.monitors),
        serials=tuple(s for s, _ in b.serials),
        incoming=incoming,
        add_fds=add_fds,
        globals=tuple(b.globals),
        accels=tuple(a for a, _ in b.accels),
        accelerator=accelerator,
        trace=tuple(b.trace),
        data_dirs=tuple(b.data_dirs),
        drives=tuple(b.drives),
        disk_images=tuple(b.disk_images),
        guest=b.guest,
        warnings=tuple(b.warnings),
        warning_timestamps=tuple(b.stamped),
        qmp_pretty=any(m.pretty for m, _ in b.monitors),
        **b.values,  # type: ignore[arg-type]
    )
    return config


def _check_machine(b: _Builder) -> MachineConfig:
    values = last_values(b.machine_pairs)
    given = values.get("type", "pc")
    canonical = _MACHINE_ALIASES.get(given, given)
    if canonical not in MACHINE_TYPES:
        raise b.fail("unsupported machine type\nUse -machine help to list supported machines")
    accel = tuple(values["accel"].split(":")) if "accel" in values else ()
    if b.enable_kvm and not accel:
        accel = ("kvm",)
    props = tuple((k, v) for k, v in values.items() if k not in ("type", "accel"))
    return MachineConfig(
        type=canonical,
        alias=given if given in _MACHINE_ALIASES else None,
        memory_backend=values.get("memory-backend"),
        accel=accel,
        properties=props,
    )


def _check_machine_props(b: _Builder, machine: MachineConfig) -> None:
    known = _COMMON_MACHINE_PROPS if machine.type == "none" else _PC_MACHINE_PROPS
    for key, value in machine.properties:
        if key in _MACHINE_OPTION_KEYS:
            continue
        kind = known.get(key)
        if kind is None:
            raise b.fail(f"Property '{machine.type}-machine.{key}' not found")
        if kind == "bool":
            b.bool_value(key, value, None)


def _check_memory(b: _Builder) -> MemoryConfig:
    opts = b.mem_opts
    size: int | None = None
    if "size" in opts:
        text = opts["size"]
        if text and text[-1].isdigit():
            text += "M"  # QEMU's default unit for -m
        try:
            size, hex_suffix = parse_size(text)
        except SizeError as err:
            raise b.fail("Parameter 'memory.size' expects size") from err
        if hex_suffix:
            _hex_suffix_warning(b, text, None)
        size = -(-size // RAM_ALIGN) * RAM_ALIGN if size else None
        if size is not None and size > UINT64_MAX:
            raise b.fail("Parameter 'memory.size' expects size")
    slots = int(opts["slots"], 0) if "slots" in opts else None
    maxmem = parse_size(opts["maxmem"])[0] if "maxmem" in opts else None
    if slots and maxmem is None:
        raise b.fail("slots specified but no max-size")
    if maxmem is not None:
        current = size or 0
        if maxmem < current:
            raise b.fail(
                "invalid value of maxmem: maximum memory size "
                f"(0x{maxmem:x}) must be at least the initial memory size (0x{current:x})"
            )
    return MemoryConfig(size=size, slots=slots, maxmem=maxmem)


_ACCEL_NAMES = {"tcg": "tcg", "kvm": "KVM"}  # as QEMU names them when falling back


def _check_accels(b: _Builder, machine: MachineConfig) -> str:
    """The accelerator QEMU would pick: the first valid one; invalid ones before it warn."""
    if b.accels and machine.accel:
        raise b.fail('The -accel and "-machine accel=" options are incompatible')
    candidates: list[tuple[AccelConfig, _Loc | None]] = list(b.accels)
    if machine.accel:
        candidates = [(AccelConfig(name, ()), None) for name in machine.accel]  # type: ignore[arg-type]
    failed: list[str] = []
    for accel, loc in candidates:
        if accel.name not in ACCELS:
            failed.append(b.fail(f"invalid accelerator {accel.name}", loc).message)
            continue
        for text in failed:
            b.add_warning(text)
        for key, value in accel.properties:
            if key not in _ACCEL_PROPS[accel.name]:
                raise b.fail(f"Property '{accel.name}-accel.{key}' not found", loc)
            if key == "thread" and value not in ("single", "multi"):
                raise b.fail(f"Invalid 'thread' setting {value}", loc)
            if key == "tb-size" and not value.isdigit():
                raise b.fail(f"Parameter '{key}' expects uint64", loc)
        if failed:
            b.warn(f"falling back to {_ACCEL_NAMES[accel.name]}")
        return accel.name
    if failed:
        raise CmdlineError("\n".join(failed))
    return "tcg"


_SMP_KEYS = ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads")


def _check_smp(b: _Builder, machine: MachineConfig) -> None:
    smp = b.values.get("smp")
    if not isinstance(smp, str):
        return
    try:
        pairs = split_opts(smp, "cpus", keyval=True)
    except OptsSyntaxError as err:
        raise b.fail(str(err)) from err
    values = last_values(pairs)
    for key, value in values.items():
        if key not in _SMP_KEYS:
            raise b.fail(f"Parameter 'smp.{key}' is unexpected")
        if not re.fullmatch(r"-?[0-9]+", value):
            raise b.fail(f"Parameter 'smp.{key}' expects integer")
    cpus = int(values.get("cpus", "1"))
    if machine.type == "none" and cpus > 1:
        raise b.fail(f"Invalid SMP CPUs {cpus}. The max CPUs supported by machine 'none' is 1")


def _check_qtest(b: _Builder) -> None:
    spec = b.values.get("qtest")
    if not isinstance(spec, str):
        return
    tail = f'{b.prefix()}: Failed to initialize device for qtest: "{spec}"'
    try:
        chardev = _legacy_chardev(b, spec, "qtest", _Loc("-qtest " + spec))
    except CmdlineError as err:
        raise CmdlineError(f"{err.message}\n{tail}") from err
    if chardev is None:
        raise CmdlineError(f"{b.prefix()}: '{spec}' is not a valid char driver\n{tail}")


def _check_backends(b: _Builder) -> None:
    for backend, _loc in b.backends:
        if backend.size == 0:
            raise b.fail(f"property 'size' of {backend.qom_type} doesn't take value '0'")
        props = dict(backend.properties)
        if props.get("policy", "default") != "default" and "host-nodes" not in props:
            raise b.fail(f"host-nodes must be set for policy {props['policy']}")


def _check_chardevs(b: _Builder) -> None:
    serial_ids = {s.chardev for s, _ in b.serials}
    stdio_users = 0
    for chardev, loc in b.chardevs:
        if chardev.backend == "stdio":
            stdio_users += 1
            if stdio_users > 1:
                raise b.fail("cannot use stdio by multiple character devices", loc)
        if chardev.backend == "stdio" and b.values.get("daemonize"):
            message = f"{b.prefix()}: {loc.text}: cannot use stdio with -daemonize"
            if chardev.id in serial_ids:
                spec = loc.text.split(" ", 1)[1]
                message += (
                    f"\n{b.prefix()}: {loc.text}: could not connect serial device to character "
                    f"backend '{spec}'"
                )
            raise CmdlineError(message)
        if chardev.backend == "socket":
            given = [k for k in ("path", "fd", "host") if dict(chardev.options).get(k) is not None]
            if len(given) > 1:
                raise b.fail("None or one of 'path', 'fd' or 'host' option required.", loc)
            if chardev.host is not None and chardev.port is None:
                raise b.fail("chardev: socket: no port given", loc)
            if not given or chardev.path == "":
                raise b.fail("Unable to parse FD number ", loc)
        elif chardev.backend == "file" and chardev.path is None:
            raise b.fail("chardev: file: no filename given", loc)


def _check_memory_backend(b: _Builder, machine: MachineConfig, memory: MemoryConfig) -> None:
    if machine.memory_backend is None:
        return
    backend = next((c for c, _ in b.backends if c.id == machine.memory_backend), None)
    if backend is None:
        raise b.fail(f"Memory backend '{machine.memory_backend}' not found")
    if memory.size is not None and memory.size != backend.size:
        raise b.fail("Machine memory size does not match the size of the memory backend")


def _check_incoming(b: _Builder) -> IncomingConfig | None:
    if b.incoming is None:
        return None
    uri, loc = b.incoming
    if uri == "defer":
        return IncomingConfig(uri, "defer")
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme not in ("tcp", "unix", "exec", "fd", "rdma"):
        raise b.fail(f"unknown migration protocol: {uri}", loc)
    if scheme == "unix":
        if not rest:
            raise b.fail("invalid Unix socket address", loc)
        return IncomingConfig(uri, "unix", path=rest)
    if scheme == "exec":
        return IncomingConfig(uri, "exec", command=rest)
    if scheme == "fd":
        from migemu.emulator.monitor_fds import parse_fd_number

        if parse_fd_number(rest) is None:  # no monitor yet: a number (monitor_fd_param)
            raise b.fail(f"Invalid file descriptor number '{rest}'", loc)
        return IncomingConfig(uri, "fd", path=rest)
    address = rest.split(",", 1)[0]
    host, colon, port = address.rpartition(":")
    if not colon:
        raise b.fail(f"error parsing address '{address}'", loc)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return IncomingConfig(uri, scheme, host=host, port=port)  # type: ignore[arg-type]


__all__ = [
    "CmdlineError",
    "CmdlineExit",
    "OPTIONS",
    "OptionSpec",
    "help_text",
    "parse_command_line",
    "version_text",
    "MIB",
]
