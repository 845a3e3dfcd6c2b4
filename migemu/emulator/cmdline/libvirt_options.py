"""The command-line forms libvirt 9.0 uses that migemu accepts without modelling them
(emulator layer, part of the command-line parser).

libvirt writes ``-object`` and ``-device`` as JSON, adds a ``secret`` object for its master
key, ``-device`` for controllers it always creates (``piix3-usb-uhci``), ``-audiodev``,
``-overcommit``, ``-boot`` and ``-no-acpi``. migemu keeps each as given (``VMConfig.devices``,
``.objects``, ``.audiodevs``, ...) so replies libvirt reads back (``qom-list
/machine/peripheral``) show them, and refuses what QEMU 7.2 refuses with its text. The guest
devices are not emulated: they have no state in migemu's migration stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migemu.qapi.qjson import dumps as qemu_json_dumps
from migemu.qapi.qjson import loads as qemu_json_loads

if TYPE_CHECKING:
    from migemu.emulator.cmdline.parser import _Builder, _Loc


@dataclass(frozen=True)
class DeviceConfig:
    """One ``-device``: its driver, id and every property as given (JSON text values)."""

    driver: str
    id: str | None
    properties: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ObjectConfig:
    """A user-creatable object migemu keeps but does not use (``secret``)."""

    qom_type: str
    id: str
    properties: tuple[tuple[str, str], ...]


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return value
    return qemu_json_dumps(value)


def parse_json_option(b: _Builder, arg: str, loc: _Loc) -> dict[str, Any]:
    """A JSON option argument (``-object {...}``, ``-device {...}``, ``-audiodev {...}``)."""
    try:
        value = qemu_json_loads(arg)
    except ValueError as err:
        raise b.fail(str(err), loc) from err
    if not isinstance(value, dict):
        raise b.fail(f"Parameter 'qom-type' does not accept value '{arg}'", loc)
    return value


def json_object_values(b: _Builder, arg: str, loc: _Loc, kinds: dict[str, str]) -> dict[str, str]:
    """``-object {JSON}`` as the key=value strings the keyval path produces, after QEMU's
    JSON type checks (``kinds``: property -> "bool" / "size" / "uint" / ...)."""
    obj = parse_json_option(b, arg, loc)
    values: dict[str, str] = {}
    for key, value in obj.items():
        kind = kinds.get(key)
        if kind == "bool" and not isinstance(value, bool):
            raise b.fail(f"Invalid parameter type for '{key}', expected: boolean", loc)
        if kind in ("size", "uint") and (isinstance(value, bool) or not isinstance(value, int)):
            raise b.fail(f"Parameter '{key}' expects uint64", loc)
        values[key] = _scalar_text(value)
    return values


SECRET_FORMATS = ("raw", "base64")


def add_secret(b: _Builder, values: dict[str, str], loc: _Loc) -> None:
    """``-object secret,id=ID,(data=…|file=…)[,format=raw|base64]``: kept, file read now."""
    object_id = values.get("id")
    if object_id is None:
        raise b.fail("Parameter 'id' is missing", loc)
    b.check_id(object_id, loc)
    for key in values:
        if key not in ("qom-type", "id", "data", "file", "format", "keyid", "iv"):
            raise b.fail(f"Parameter '{key}' is unexpected", loc)
    fmt = values.get("format", "raw")
    if fmt not in SECRET_FORMATS:
        raise b.fail(f"Parameter 'format' does not accept value '{fmt}'", loc)
    objects: list[ObjectConfig] = b.values.setdefault("objects", [])  # type: ignore[assignment]
    if any(o.id == object_id for o in objects) or any(m.id == object_id for m, _ in b.backends):
        raise b.fail(
            f"attempt to add duplicate property '{object_id}' to object (type 'container')"
        )
    if "file" in values:
        path = values["file"]
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise b.fail(
                f"Unable to read {path}: Failed to open file \u201c{path}\u201d: {err.strerror}"
            ) from err
    elif "data" not in values:
        raise b.fail("'file' or 'data' property must be set")
    objects.append(
        ObjectConfig(
            "secret", object_id, tuple((k, v) for k, v in values.items() if k != "qom-type")
        )
    )


def opt_device(b: _Builder, arg: str, loc: _Loc) -> None:
    """``-device DRIVER[,prop=value...]`` or ``-device {JSON}``: kept as given."""
    from migemu.emulator.libvirt_answers import device_types

    if arg.startswith("{"):
        obj = parse_json_option(b, arg, loc)
        pairs = [(k, _scalar_text(v)) for k, v in obj.items()]
    else:
        driver_text, _, rest = arg.partition(",")
        pairs = [("driver", driver_text)] + [
            (k, v) for k, _, v in (p.partition("=") for p in rest.split(",") if p)
        ]
    values = dict(pairs)
    driver = values.get("driver")
    if driver is None:
        raise b.fail("Parameter 'driver' is missing", loc)
    if driver not in device_types():
        raise b.fail(f"'{driver}' is not a valid device model name", loc)
    device_id = values.get("id")
    if device_id is not None:
        b.check_id(device_id, loc)
    devices: list[DeviceConfig] = b.values.setdefault("devices", [])  # type: ignore[assignment]
    if device_id is not None and any(d.id == device_id for d in devices):
        raise b.fail(f"Duplicate device ID '{device_id}'", loc)
    props = tuple((k, v) for k, v in pairs if k not in ("driver", "id"))
    devices.append(DeviceConfig(driver, device_id, props))


AUDIO_DRIVERS = ("none", "alsa", "oss", "pa", "sdl", "spice", "wav", "dbus", "jack")


def opt_audiodev(b: _Builder, arg: str, loc: _Loc) -> None:
    if arg.startswith("{"):
        values = {k: _scalar_text(v) for k, v in parse_json_option(b, arg, loc).items()}
    else:
        driver_text, _, rest = arg.partition(",")
        values = {"driver": driver_text}
        values.update((k, v) for k, _, v in (p.partition("=") for p in rest.split(",") if p))
    driver = values.get("driver")
    if driver is None:
        raise b.fail("Parameter 'driver' is missing", loc)
    if driver not in AUDIO_DRIVERS:
        raise b.fail(f"Parameter 'driver' does not accept value '{driver}'", loc)
    if "id" not in values:
        raise b.fail("Parameter 'id' is missing", loc)
    audiodevs: list[tuple[tuple[str, str], ...]] = b.values.setdefault("audiodevs", [])  # type: ignore[assignment]
    audiodevs.append(tuple(values.items()))


def _on_off_options(
    b: _Builder, arg: str, loc: _Loc, allowed: tuple[str, ...], prefix: str
) -> dict[str, str]:
    values: dict[str, str] = {}
    for part in (p for p in arg.split(",") if p):
        key, eq, value = part.partition("=")
        if key not in allowed:
            raise b.fail(f"Invalid parameter '{key}'", loc)
        if value not in ("on", "off"):
            where = loc if not prefix else None
            raise b.fail(f"Parameter '{prefix}{key}' expects 'on' or 'off'", where)
        values[key] = value
    return values


def opt_overcommit(b: _Builder, arg: str, loc: _Loc) -> None:
    b.values["overcommit"] = tuple(_on_off_options(b, arg, loc, ("mem-lock", "cpu-pm"), "").items())


def opt_boot(b: _Builder, arg: str, loc: _Loc) -> None:
    """``-boot strict=on`` and friends: kept (migemu's guest does not boot)."""
    parts = [p for p in arg.split(",") if p]
    for part in parts:
        key, _, value = part.partition("=")
        if key in ("strict", "menu") and value not in ("on", "off"):
            raise b.fail(f"Parameter 'boot.{key}' expects 'on' or 'off'")
    b.values["boot"] = arg


def opt_no_acpi(b: _Builder, arg: str, loc: _Loc) -> None:
    b.values["no_acpi"] = True


def finish(b: _Builder) -> None:
    """Lists gathered while parsing become the config's tuples."""
    for key in ("devices", "objects", "audiodevs"):
        if key in b.values:
            b.values[key] = tuple(b.values[key])  # type: ignore[arg-type]
