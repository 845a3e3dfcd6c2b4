"""Migration URIs: ``tcp:``, ``unix:``, ``exec:``, ``fd:``, ``vsock:``, parsed as QEMU 7.2 does.

Pure functions (emulator layer). ``parse_uri`` splits a URI into an address and raises
``UriError`` with QEMU's texts for malformed ones (``error parsing address '…'``, ``invalid
Unix socket address``, ``File descriptor named 'x' has not been found``). An unknown scheme is
``UnknownProtocol``: QEMU words it differently on the two sides (``Parameter 'uri' expects a
valid migration protocol`` for ``migrate``, ``unknown migration protocol: <uri>`` for
``migrate-incoming``) and records no error-desc for it on the source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNIX_PATH_MAX = 108
_INET_PORT_ONLY = re.compile(r":([^,]{1,32})")
_INET_V6 = re.compile(r"\[([^\]]{1,64})\]:([^,]{1,32})")
_INET_HOST = re.compile(r"([^:]{1,64}):([^,]{1,32})")
_VSOCK = re.compile(r"([^:]{1,32}):([^,]{1,32})")


class UriError(Exception):
    """A URI QEMU rejects while parsing it; ``desc`` is QEMU's text."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


class UnknownProtocol(UriError):
    """The URI's scheme is none QEMU knows."""


@dataclass(frozen=True)
class MigrationAddress:
    """Where a migration goes or comes from. ``kind``: tcp, unix, exec, vsock or fd (``path``
    is then the name or number after ``fd:``; ``fd`` the descriptor once it was looked up)."""

    kind: str
    host: str = ""
    port: str = ""
    path: str = ""
    command: str = ""
    ipv4: bool = False
    ipv6: bool = False
    fd: int = -1

    def describe(self) -> str:
        """The address as QEMU names it in connect errors (``host:port`` or the path)."""
        if self.kind == "unix":
            return self.path
        return f"{self.host}:{self.port}"

    @property
    def multi_channel(self) -> bool:
        """multifd needs a protocol that can open more connections (tcp, unix, vsock)."""
        return self.kind in ("tcp", "unix", "vsock")


def _parse_inet(text: str) -> MigrationAddress:
    _, _, opts = text.partition(",")
    if text.startswith(":"):
        m = _INET_PORT_ONLY.match(text)
        if m is None:
            raise UriError(f"error parsing port in address '{text}'")
        host, port = "", m.group(1)
    elif text.startswith("["):
        m = _INET_V6.match(text)
        if m is None:
            raise UriError(f"error parsing IPv6 address '{text}'")
        host, port = m.group(1), m.group(2)
    else:
        m = _INET_HOST.match(text)
        if m is None:
            raise UriError(f"error parsing address '{text}'")
        host, port = m.group(1), m.group(2)
    flags = {o.split("=")[0] for o in opts.split(",") if o}
    return MigrationAddress("tcp", host=host, port=port, ipv4="ipv4" in flags, ipv6="ipv6" in flags)


def _parse_unix(path: str) -> MigrationAddress:
    if not path:
        raise UriError("invalid Unix socket address")
    if len(path.encode()) >= UNIX_PATH_MAX:
        raise UriError(f"UNIX socket path '{path}' is too long")
    return MigrationAddress("unix", path=path)


def parse_uri(uri: str) -> MigrationAddress:
    """The address of a migration URI, or ``UriError``/``UnknownProtocol`` with QEMU's text."""
    if uri.startswith("tcp:"):
        return _parse_inet(uri[4:])
    if uri.startswith("unix:"):
        return _parse_unix(uri[5:])
    if uri.startswith("vsock:"):
        rest = uri[6:]
        m = _VSOCK.match(rest)
        if m is None:
            raise UriError(f"error parsing address '{rest}'")
        return MigrationAddress("vsock", host=m.group(1), port=m.group(2))
    if uri.startswith("exec:"):
        return MigrationAddress("exec", command=uri[5:])
    if uri.startswith("fd:"):
        # The name is looked up by the caller: the source takes a getfd name, the
        # destination a name or a descriptor number (``monitor_fds``).
        return MigrationAddress("fd", path=uri[3:])
    raise UnknownProtocol("Parameter 'uri' expects a valid migration protocol")


def incoming_protocol_error(uri: str) -> str:
    return f"unknown migration protocol: {uri}"
