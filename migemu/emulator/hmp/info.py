"""HMP ``info`` subcommands and their output formats, as QEMU 7.2 prints them (emulator layer).

Each subcommand calls the QMP query it stands on and formats the result; the formats (units,
`on`/`off`, `''` around strings, kbytes as bytes >> 10, the `globals:` block) are QEMU 7.2's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migemu.emulator.hmp.console import HMPConsole


@dataclass(frozen=True)
class InfoCommand:
    name: str
    params: str
    help: str
    run: Callable[[HMPConsole], str]

    def help_line(self, prefix: str = "") -> str:
        return f"{prefix}{self.name} {self.params} -- {self.help}\n"


def _onoff(value: bool) -> str:
    return "on" if value else "off"


def info_status(con: HMPConsole) -> str:
    st = con.qmp("query-status")
    text = "VM status: " + ("running" if st["running"] else "paused")
    if st["singlestep"]:
        text += " (single step mode)"
    elif not st["running"] and st["status"] != "paused":
        text += f" ({st['status']})"
    return text + "\n"


def info_version(con: HMPConsole) -> str:
    v = con.qmp("query-version")
    q = v["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}{v['package']}\n"


def info_name(con: HMPConsole) -> str:
    name = con.qmp("query-name").get("name")
    return f"{name}\n" if name is not None else ""


def info_uuid(con: HMPConsole) -> str:
    return con.qmp("query-uuid")["UUID"] + "\n"


def info_history(con: HMPConsole) -> str:
    """The line editor's history, oldest first; nothing without one (human-monitor-command)."""
    if con.history is None:
        return ""
    return "".join(f"{i}: '{line}'\n" for i, line in enumerate(con.history()))


def info_migrate_capabilities(con: HMPConsole) -> str:
    caps = con.qmp("query-migrate-capabilities")
    return "".join(f"{c['capability']}: {_onoff(c['state'])}\n" for c in caps)


# (wire name, format) in the order QEMU 7.2's hmp_info_migrate_parameters prints them.
_PARAM_LINES: tuple[tuple[str, str], ...] = (
    ("announce-initial", "{} ms"),
    ("announce-max", "{} ms"),
    ("announce-rounds", "{}"),
    ("announce-step", "{} ms"),
    ("compress-level", "{}"),
    ("compress-threads", "{}"),
    ("compress-wait-thread", "bool"),
    ("decompress-threads", "{}"),
    ("throttle-trigger-threshold", "{}"),
    ("cpu-throttle-initial", "{}"),
    ("cpu-throttle-increment", "{}"),
    ("cpu-throttle-tailslow", "bool"),
    ("max-cpu-throttle", "{}"),
    ("tls-creds", "'{}'"),
    ("tls-hostname", "'{}'"),
    ("max-bandwidth", "{} bytes/second"),
    ("downtime-limit", "{} ms"),
    ("x-checkpoint-delay", "{} ms"),
    ("block-incremental", "bool"),
    ("multifd-channels", "{}"),
    ("multifd-compression", "{}"),
    ("xbzrle-cache-size", "{} bytes"),
    ("max-postcopy-bandwidth", "{}"),
    ("tls-authz", "'{}'"),
)


def info_migrate_parameters(con: HMPConsole) -> str:
    params = con.qmp("query-migrate-parameters")
    lines = []
    for name, fmt in _PARAM_LINES:
        value = params[name]
        lines.append(f"{name}: {_onoff(value) if fmt == 'bool' else fmt.format(value)}\n")
    mapping = params.get("block-bitmap-mapping")
    if mapping is not None:
        lines.append("block-bitmap-mapping:\n")
        for node in mapping:
            lines.append(f"  '{node['node-name']}' -> '{node['alias']}'\n")
            for bitmap in node.get("bitmaps", []):
                lines.append(f"    '{bitmap['name']}' -> '{bitmap['alias']}'\n")
    return "".join(lines)


GLOBALS = (
    "globals:\n"
    "store-global-state: on\n"
    "only-migratable: off\n"
    "send-configuration: on\n"
    "send-section-footer: on\n"
    "decompress-error-check: on\n"
    "clear-bitmap-shift: 18\n"
)


def _kb(value: int) -> int:
    return value >> 10


def format_migrate(info: dict[str, Any]) -> str:
    """QEMU 7.2's ``info migrate`` text for a query-migrate value."""
    out = [GLOBALS]
    reasons = info.get("blocked-reasons")
    if reasons:
        out.append("Outgoing migration blocked:\n")
        out.extend(f"  {r}\n" for r in reasons)
    if "status" in info:
        line = f"Migration status: {info['status']}"
        if info["status"] == "failed" and "error-desc" in info:
            line += f" ({info['error-desc']})"
        out.append(line + "\n")
        out.append(f"total time: {info.get('total-time', 0)} ms\n")
        if "expected-downtime" in info:
            out.append(f"expected downtime: {info['expected-downtime']} ms\n")
        if "downtime" in info:
            out.append(f"downtime: {info['downtime']} ms\n")
        if "setup-time" in info:
            out.append(f"setup: {info['setup-time']} ms\n")
    ram = info.get("ram")
    if ram is not None:
        out.append(f"transferred ram: {_kb(ram['transferred'])} kbytes\n")
        out.append(f"throughput: {ram['mbps']:0.2f} mbps\n")
        out.append(f"remaining ram: {_kb(ram['remaining'])} kbytes\n")
        out.append(f"total ram: {_kb(ram['total'])} kbytes\n")
        out.append(f"duplicate: {ram['duplicate']} pages\n")
        out.append(f"skipped: {ram['skipped']} pages\n")
        out.append(f"normal: {ram['normal']} pages\n")
        out.append(f"normal bytes: {_kb(ram['normal-bytes'])} kbytes\n")
        out.append(f"dirty sync count: {ram['dirty-sync-count']}\n")
        out.append(f"page size: {_kb(ram['page-size'])} kbytes\n")
        out.append(f"multifd bytes: {_kb(ram['multifd-bytes'])} kbytes\n")
        out.append(f"pages-per-second: {ram['pages-per-second']}\n")
        if ram["dirty-pages-rate"]:
            out.append(f"dirty pages rate: {ram['dirty-pages-rate']} pages\n")
        if ram["postcopy-requests"]:
            out.append(f"postcopy request count: {ram['postcopy-requests']}\n")
        if ram["precopy-bytes"]:
            out.append(f"precopy ram: {_kb(ram['precopy-bytes'])} kbytes\n")
        if ram["downtime-bytes"]:
            out.append(f"downtime ram: {_kb(ram['downtime-bytes'])} kbytes\n")
        if ram["postcopy-bytes"]:
            out.append(f"postcopy ram: {_kb(ram['postcopy-bytes'])} kbytes\n")
        if ram["dirty-sync-missed-zero-copy"]:
            n = ram["dirty-sync-missed-zero-copy"]
            out.append(f"Zero-copy-send fallbacks happened: {n} times\n")
    if "cpu-throttle-percentage" in info:
        out.append(f"cpu throttle percentage: {info['cpu-throttle-percentage']}\n")
    sockets = info.get("socket-address")
    if sockets:
        out.append("socket address: [\n")
        for s in sockets:
            out.append(f"\t{_socket_str(s)}\n")
        out.append("]\n")
    return "".join(out)


def _socket_str(addr: dict[str, Any]) -> str:
    kind = addr.get("type")
    if kind == "inet":
        return f"tcp:{addr['host']}:{addr['port']}"
    if kind == "unix":
        return f"unix:{addr['path']}"
    if kind == "vsock":
        return f"vsock:{addr['cid']}:{addr['port']}"
    return f"fd:{addr.get('str', '')}"


def info_migrate(con: HMPConsole) -> str:
    return format_migrate(con.qmp("query-migrate"))


SUBCOMMANDS: tuple[InfoCommand, ...] = (
    InfoCommand("history", "", "show the command line history", info_history),
    InfoCommand("migrate", "", "show migration status", info_migrate),
    InfoCommand(
        "migrate_capabilities", "", "show current migration capabilities", info_migrate_capabilities
    ),
    InfoCommand(
        "migrate_parameters", "", "show current migration parameters", info_migrate_parameters
    ),
    InfoCommand("name", "", "show the current VM name", info_name),
    InfoCommand("status", "", "show the current VM status (running|paused)", info_status),
    InfoCommand("uuid", "", "show the current VM UUID", info_uuid),
    InfoCommand("version", "", "show the version of QEMU", info_version),
)


def find(name: str) -> InfoCommand | None:
    for sub in SUBCOMMANDS:
        if sub.name == name:
            return sub
    return None
