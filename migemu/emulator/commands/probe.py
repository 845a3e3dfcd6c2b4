"""What libvirt 9.0 asks when it probes an emulator and starts a domain (emulator layer).

Two kinds of answers:
- recorded: ``query-target``, ``query-machines``, ``query-cpu-definitions``,
  ``query-cpu-model-expansion``, ``qom-list-types``, ``qom-list-properties``,
  ``device-list-properties``, ``query-tpm-*``, ``query-command-line-options``,
  ``query-sev/sgx-capabilities`` and the vCPU's ``qom-list``/``qom-get`` are real QEMU 7.2's
  replies to the same arguments (``libvirt_answers``); other arguments get a GenericError
  saying there is no recorded answer (QEMU's own error where the recording has one).
- live, from this process's configuration: ``query-kvm`` (migemu has no KVM),
  ``query-chardev``, ``query-cpus-fast``, ``query-hotpluggable-cpus``, ``qom-list
  /machine/peripheral`` (the ``-device``s), ``query-block``/``query-named-block-nodes``/
  ``query-iothreads`` (migemu has no block devices and no iothreads: empty lists).
``services_for`` gives the handlers the command line's view (``-cpu``, ``-device``,
chardevs); the monitor endpoints are attached by the runtime.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from migemu.emulator import libvirt_answers as answers
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.cmdline import VMConfig
    from migemu.emulator.machine import Machine

CPU_PATH_PREFIX = "/machine/unattached/device["
DEFAULT_CPU_MODEL = "qemu64"


@dataclass
class ChardevView:
    label: str
    address: str  # QEMU's "unix:PATH,server=on" / "fd:N,server=on" / ...
    bound_path: str | None = None  # an fd-passed unix listener's path (getsockname)
    monitor: bool = False


@dataclass
class ProbeView:
    """What the command line says, as these commands need it."""

    cpu_model: str = DEFAULT_CPU_MODEL
    cpu_props: dict[str, bool] = field(default_factory=dict)
    devices: list[tuple[str, str | None]] = field(default_factory=list)  # (driver, id)
    chardevs: list[ChardevView] = field(default_factory=list)


class RecordedAnswerError(QMPError):
    pass


def _recorded(
    command: str, arguments: dict[str, Any], sessions: tuple[str, ...] = answers.SESSIONS
) -> Any:
    reply = answers.lookup(command, arguments, sessions)
    if reply is None:
        raise RecordedAnswerError(
            f"migemu has no recorded QEMU 7.2 answer for {command} with these arguments "
            f"(recorded: {len(answers.recorded_arguments(command))} argument sets, "
            "as libvirt 9.0 sends them)"
        )
    if "error" in reply:
        raise QMPError(reply["error"]["desc"], reply["error"]["class"])
    return reply["return"]


def _qmp_arguments(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


def _cpu_props(spec: str | None) -> tuple[str, dict[str, bool]]:
    """``-cpu MODEL[,feat=on|off|+feat|-feat...]``: the model and the features it sets."""
    if not spec:
        return DEFAULT_CPU_MODEL, {}
    model, *parts = spec.split(",")
    props: dict[str, bool] = {}
    for part in parts:
        if part.startswith(("+", "-")):
            props[part[1:].replace("_", "-")] = part[0] == "+"
        elif "=" in part:
            key, _, value = part.partition("=")
            if value in ("on", "off", "true", "false"):
                props[key.replace("_", "-")] = value in ("on", "true")
    return model, props


def _inherited_unix_path(fd: int) -> str | None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        name = sock.getsockname()
        return name if isinstance(name, str) and name else None
    except OSError:
        return None
    finally:
        sock.detach()


def view_from_config(config: VMConfig) -> ProbeView:
    model, props = _cpu_props(config.cpu)
    view = ProbeView(cpu_model=model, cpu_props=props)
    view.devices = [(d.driver, d.id) for d in config.devices]
    monitors = {m.chardev for m in config.monitors}
    for c in config.chardevs:
        options = dict(c.options)
        listen = ",server=on" if c.server else ""
        bound = None
        if "fd" in options:
            address = f"fd:{options['fd']}{listen}"
            if options["fd"].isdigit():
                bound = _inherited_unix_path(int(options["fd"]))
        elif c.path is not None:
            address = f"unix:{c.path}{listen}"
            bound = c.path
        elif c.host is not None:
            address = f"tcp:{c.host}:{c.port}{listen}"
        else:
            address = c.backend
        view.chardevs.append(ChardevView(c.id, address, bound, c.id in monitors))
    return view


def services_for(config: VMConfig, machine: Machine) -> list[Any]:
    """Give the handlers this command line's view; no service runs."""
    machine.probe_view = view_from_config(config)  # type: ignore[attr-defined]
    return []


def register(machine: Machine) -> None:
    d = machine.dispatcher

    def view() -> ProbeView:
        return getattr(machine, "probe_view", None) or ProbeView()

    def recorded(name: str, sessions: tuple[str, ...] = ("probe",)) -> None:
        d.register(name, lambda args: _recorded(name, _qmp_arguments(args), sessions))

    for name in (
        "query-target",
        "query-machines",
        "query-cpu-definitions",
        "query-cpu-model-expansion",
        "qom-list-properties",
        "query-tpm-models",
        "query-tpm-types",
        "query-command-line-options",
        "query-sev-capabilities",
        "query-sgx-capabilities",
    ):
        recorded(name)

    def device_list_properties(args: dict[str, Any]) -> Any:
        typename = args["typename"]
        if typename not in answers.qom_types():
            raise QMPError(f"Device '{typename}' not found", "DeviceNotFound")
        return _recorded("device-list-properties", {"typename": typename}, ("probe",))

    def qom_list_types(args: dict[str, Any]) -> Any:
        if args.get("abstract"):
            return _recorded("qom-list-types", _qmp_arguments(args), ("probe",))
        listed = _recorded("qom-list-types", {}, ("probe",))
        implements = args.get("implements")
        if implements is None:
            return listed
        return [t for t in listed if answers.implements(t["name"], implements)]

    def cpus() -> int:
        return machine.options.cpus

    def cpu_path(i: int) -> str:
        # QEMU creates kvmvapic (device[1]) right after the first vCPU.
        return f"{CPU_PATH_PREFIX}{i if i == 0 else i + 1}]"

    def cpu_props(i: int) -> dict[str, int]:
        return {"core-id": 0, "thread-id": 0, "socket-id": i}

    def query_hotpluggable_cpus(args: dict[str, Any]) -> Any:
        if machine.options.machine_type == "none":
            raise QMPError("machine does not support hot-plugging CPUs")
        return [
            {
                "props": cpu_props(i),
                "vcpus-count": 1,
                "qom-path": cpu_path(i),
                "type": f"{view().cpu_model}-x86_64-cpu",
            }
            for i in reversed(range(cpus()))
        ]

    def query_cpus_fast(args: dict[str, Any]) -> Any:
        tid = threading.get_native_id()
        return [
            {
                "thread-id": tid,
                "props": cpu_props(i),
                "qom-path": cpu_path(i),
                "cpu-index": i,
                "target": "x86_64",
            }
            for i in range(cpus())
        ]

    def cpu_index(path: str) -> int | None:
        for i in range(cpus()):
            if path == cpu_path(i):
                return i
        return None

    def is_kvmvapic(path: str) -> bool:
        return cpus() > 0 and path == f"{CPU_PATH_PREFIX}1]"

    def qom_list(args: dict[str, Any]) -> Any:
        path = args["path"]
        if path == "/machine/peripheral" and machine.options.machine_type != "none":
            out: list[dict[str, str]] = [{"name": "type", "type": "string"}]
            out += [{"name": i, "type": f"child<{drv}>"} for drv, i in view().devices if i]
            return out
        if cpu_index(path) is not None and view().cpu_model == DEFAULT_CPU_MODEL:
            return _recorded("qom-list", {"path": cpu_path(0)}, ("domain",))
        raise QMPError(f"Device '{path}' not found", "DeviceNotFound")

    def qom_get(args: dict[str, Any]) -> Any:
        path, prop = args["path"], args["property"]
        if is_kvmvapic(path):
            raise QMPError(f"Property 'kvmvapic.{prop}' not found")
        if cpu_index(path) is None:
            raise QMPError(f"Device '{path}' not found", "DeviceNotFound")
        if view().cpu_model != DEFAULT_CPU_MODEL:
            raise RecordedAnswerError(
                f"migemu has recorded QEMU 7.2's CPU properties for -cpu {DEFAULT_CPU_MODEL} only"
            )
        value = _recorded("qom-get", {"path": cpu_path(0), "property": prop}, ("domain",))
        override = view().cpu_props.get(prop.replace("_", "-"))
        if isinstance(value, bool) and override is not None:
            return override
        return value

    def query_chardev(args: dict[str, Any]) -> Any:
        endpoints = {e.spec.label: e for e in getattr(machine, "monitor_endpoints", ())}
        out = []
        for c in view().chardevs:
            endpoint = endpoints.get(c.label)
            connected = endpoint is not None and endpoint.active is not None
            if connected and c.bound_path is not None:
                filename = f"unix:{c.bound_path},server=on"
            elif connected:
                filename = c.address
            else:
                filename = f"disconnected:{c.address}"
            out.append({"frontend-open": c.monitor, "filename": filename, "label": c.label})
        return list(reversed(out))  # QEMU prepends each chardev to the list

    d.register("query-kvm", lambda args: {"enabled": False, "present": False})
    d.register("device-list-properties", device_list_properties)
    d.register("qom-list-types", qom_list_types)
    d.register("query-hotpluggable-cpus", query_hotpluggable_cpus)
    d.register("query-cpus-fast", query_cpus_fast)
    d.register("qom-list", qom_list)
    d.register("qom-get", qom_get)
    d.register("query-chardev", query_chardev)
    d.register("query-iothreads", lambda args: [])
    d.register("query-named-block-nodes", lambda args: [])
    d.register("query-block", lambda args: [])
