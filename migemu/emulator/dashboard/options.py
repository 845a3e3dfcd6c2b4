"""The ``-dashboard`` option: where the HTTP dashboard listens and what it allows (emulator layer).

``HOST:PORT[,writable=on|off][,url-file=PATH]``. PORT 0 lets the kernel pick a port. The
dashboard is read-only unless ``writable=on``; then write requests need the token printed on
stderr. ``url-file`` receives the dashboard's URL (one line) once it listens, which is how a
script learns a picked port. Pure parsing, no IO.
"""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class DashboardOptionError(ValueError):
    """A ``-dashboard`` argument that does not parse; the text is QEMU-style."""


@dataclass(frozen=True)
class DashboardOptions:
    host: str = "127.0.0.1"
    port: int = 0
    writable: bool = False
    url_file: str | None = None

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS


def parse_bool(key: str, value: str) -> bool:
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise DashboardOptionError(f"Parameter '{key}' expects 'on' or 'off'")


def parse_dashboard_option(text: str) -> DashboardOptions:
    """``HOST:PORT[,key=value...]`` -> options (an empty HOST means loopback)."""
    address, *props = text.split(",")
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise DashboardOptionError(f"error parsing address '{address}'")
    writable = False
    url_file: str | None = None
    for prop in props:
        key, eq, value = prop.partition("=")
        if key == "writable":
            writable = parse_bool(key, value if eq else "on")
        elif key == "url-file" and eq and value:
            url_file = value
        else:
            raise DashboardOptionError(f"Invalid parameter '{key}'")
    return DashboardOptions(host or "127.0.0.1", int(port), writable, url_file)


def dashboard_options(value: object) -> DashboardOptions | None:
    """``VMConfig.dashboard`` in any form the command line gives it: None, (host, port), text."""
    if value is None or isinstance(value, DashboardOptions):
        return value
    if isinstance(value, str):
        return parse_dashboard_option(value)
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        return DashboardOptions(str(host) or "127.0.0.1", int(port))
    raise TypeError(f"unexpected dashboard setting {value!r}")
