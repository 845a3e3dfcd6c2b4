"""TLS for migration: credentials objects, QEMU 7.2's checks, and the TLS session (emulator layer).

``tls-creds-x509``, ``tls-creds-psk``, ``tls-creds-anon`` and ``authz-simple`` are created
from ``-object`` or ``object-add``; like QEMU's crypto/tlscreds*.c they read their files at
creation (with QEMU's texts) and live in a ``TlsObjects`` registry by id. When a migration
opens or accepts a channel, ``client_session``/``server_session`` look up ``tls-creds`` as
migration/tls.c does ("No TLS credentials with id ...", "Expected TLS credentials for a ...
endpoint"), and ``handshake`` turns the connected socket into a TLS stream.

Why pyOpenSSL for every credential type: Python 3.11's ``ssl`` has no PSK callbacks, and its
x509 verification aborts the handshake, whereas GnuTLS (QEMU) completes the handshake and
only then checks the peer (crypto/tlssession.c ``check_credentials``): which side fails, and
with which text, depends on that order. With pyOpenSSL the verify callback records the chain
errors and lets the handshake finish; the checks then run in QEMU's order with its texts.
PSK uses OpenSSL's PSK callbacks through the ``cryptography`` bindings that pyOpenSSL is built
on. GnuTLS's "NORMAL" priority gives TLS 1.3 with AES-GCM; so does this, so real QEMU 7.2
interoperates in both directions.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CA_CERT = "ca-cert.pem"
CA_CRL = "ca-crl.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"
DH_PARAMS = "dh-params.pem"
PSK_FILE = "keys.psk"
PSK_DEFAULT_USERNAME = "qemu"

TLS_TYPES = ("tls-creds-anon", "tls-creds-psk", "tls-creds-x509")
AUTHZ_TYPES = ("authz-simple",)
OBJECT_TYPES = (*AUTHZ_TYPES, *TLS_TYPES)

# Properties of each type, with their kind (QAPI crypto.json / authz.json of 7.2).
_CREDS_PROPS = {"verify-peer": "bool", "dir": "str", "endpoint": "endpoint", "priority": "str"}
PROPERTIES: dict[str, dict[str, str]] = {
    "tls-creds-anon": {**_CREDS_PROPS, "loaded": "bool"},
    "tls-creds-psk": {**_CREDS_PROPS, "loaded": "bool", "username": "str"},
    "tls-creds-x509": {
        **_CREDS_PROPS,
        "loaded": "bool",
        "sanity-check": "bool",
        "passwordid": "str",
    },
    "authz-simple": {"identity": "str"},
}


class TlsError(Exception):
    """A TLS setup or session failure; ``desc`` is QEMU's text."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


# -- objects -----------------------------------------------------------------------------------


@dataclass
class TlsCreds:
    """One ``tls-creds-*`` object, its files read at creation as QEMU does."""

    id: str
    qom_type: str
    endpoint: str = "client"
    dir: str | None = None
    verify_peer: bool = True
    priority: str | None = None
    username: str | None = None  # psk
    sanity_check: bool = True  # x509
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    psk_file: str | None = None
    psk_key: bytes | None = None  # psk client: its key, from keys.psk

    @property
    def kind(self) -> str:
        return self.qom_type.removeprefix("tls-creds-")


@dataclass
class AuthzSimple:
    id: str
    identity: str
    qom_type: str = "authz-simple"

    def is_allowed(self, identity: str) -> bool:
        return identity == self.identity


def _path(creds: TlsCreds, name: str, required: bool) -> str | None:
    """qcrypto_tls_creds_get_path: the file in ``dir``, or None if optional and absent."""
    if creds.dir is None:
        if required:
            raise TlsError("Missing 'dir' property value")
        return None
    path = f"{creds.dir}/{name}"
    try:
        os.stat(path)
    except OSError as err:
        if isinstance(err, FileNotFoundError) and not required:
            return None
        raise TlsError(f"Unable to access credentials {path}: {err.strerror}") from err
    return path


def lookup_psk(path: str, username: str) -> bytes:
    """The hex key of ``username`` in a GnuTLS-style ``username:hexkey`` file."""
    try:
        with open(path, "rb") as f:
            content = f.read().decode("utf-8", "replace")
    except OSError as err:
        raise TlsError(
            f"Cannot read PSK file {path}: Failed to open file “{path}”: {err.strerror}"
        ) from err
    for line in content.split("\n"):
        if line.startswith(username) and line[len(username) : len(username) + 1] == ":":
            hexkey = line[len(username) + 1 :].strip()
            try:
                return bytes.fromhex(hexkey)
            except ValueError as err:
                raise TlsError(
                    "Cannot set PSK client credentials: Error in the hex conversion."
                ) from err
    raise TlsError(f"Username {username} not found in PSK file {path}")


def _load(creds: TlsCreds) -> None:
    """The ``complete`` step of each type (crypto/tlscreds{x509,psk,anon}.c), same order."""
    server = creds.endpoint == "server"
    if creds.kind == "x509":
        if server:
            creds.ca_cert = _path(creds, CA_CERT, True)
            _path(creds, CA_CRL, False)
            creds.cert = _path(creds, SERVER_CERT, True)
            creds.key = _path(creds, SERVER_KEY, True)
            _path(creds, DH_PARAMS, False)
        else:
            creds.ca_cert = _path(creds, CA_CERT, True)
            creds.cert = _path(creds, CLIENT_CERT, False)
            creds.key = _path(creds, CLIENT_KEY, False)
        _check_pem_files(creds)
    elif creds.kind == "psk":
        if server:
            if creds.username is not None:
                raise TlsError("username should not be set when endpoint=server")
            _path(creds, DH_PARAMS, False)
            creds.psk_file = _path(creds, PSK_FILE, True)
        else:
            creds.psk_file = _path(creds, PSK_FILE, True)
            assert creds.psk_file is not None
            creds.psk_key = lookup_psk(creds.psk_file, creds.username or PSK_DEFAULT_USERNAME)
    elif server:
        _path(creds, DH_PARAMS, False)


def _check_pem_files(creds: TlsCreds) -> None:
    """Load the certificates once, so that bad files fail at creation, as with GnuTLS."""
    from migemu.emulator.migration import openssl

    ctx = openssl.Context(server=creds.endpoint == "server")
    assert creds.ca_cert is not None
    try:
        ctx.load_ca(creds.ca_cert)
    except openssl.OpenSSLError as err:
        raise TlsError(
            f"Cannot load CA certificate '{creds.ca_cert}': Error while reading file."
        ) from err
    if creds.cert is not None and creds.key is not None:
        try:
            ctx.load_cert(creds.cert, creds.key)
        except openssl.OpenSSLError as err:
            raise TlsError(
                f"Cannot load certificate '{creds.cert}' & key '{creds.key}': "
                "Error while reading file."
            ) from err


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise TlsError(f"Parameter '{name}' expects 'on' or 'off'")


def create_object(
    qom_type: str, object_id: str, props: Mapping[str, Any]
) -> TlsCreds | AuthzSimple:
    """One object from already type-checked properties (QAPI for QMP, the parser for -object)."""
    if qom_type == "authz-simple":
        if "identity" not in props:
            raise TlsError("Parameter 'identity' is missing")
        return AuthzSimple(object_id, str(props["identity"]))
    creds = TlsCreds(object_id, qom_type)
    if "endpoint" in props:
        if props["endpoint"] not in ("client", "server"):
            raise TlsError(f"Parameter 'endpoint' does not accept value '{props['endpoint']}'")
        creds.endpoint = props["endpoint"]
    creds.dir = props.get("dir")
    creds.priority = props.get("priority")
    creds.username = props.get("username")
    if "verify-peer" in props:
        creds.verify_peer = _bool("verify-peer", props["verify-peer"])
    if "sanity-check" in props:
        creds.sanity_check = _bool("sanity-check", props["sanity-check"])
    _load(creds)
    return creds


@dataclass
class TlsObjects:
    """The user-created TLS and authz objects of one machine, by id."""

    objects: dict[str, TlsCreds | AuthzSimple] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, qom_type: str, object_id: str, props: Mapping[str, Any]) -> None:
        obj = create_object(qom_type, object_id, props)
        with self.lock:
            if object_id in self.objects:
                raise TlsError(
                    f"attempt to add duplicate property '{object_id}' to object (type 'container')"
                )
            self.objects[object_id] = obj

    def delete(self, object_id: str) -> bool:
        with self.lock:
            return self.objects.pop(object_id, None) is not None

    def get(self, object_id: str) -> TlsCreds | AuthzSimple | None:
        return self.objects.get(object_id)


# -- the checks of migration/tls.c --------------------------------------------------------------


@dataclass(frozen=True)
class TlsSession:
    """What one channel's handshake needs: credentials, peer name to check, authz."""

    creds: TlsCreds
    hostname: str | None = None  # client: the name the server's certificate must match
    authz: AuthzSimple | None = None  # server: the identity the client's certificate must have
    authz_id: str | None = None
    objects: TlsObjects | None = None


def _creds(objects: TlsObjects, creds_id: str, endpoint: str) -> TlsCreds:
    obj = objects.get(creds_id)
    if obj is None:
        raise TlsError(f"No TLS credentials with id '{creds_id}'")
    if not isinstance(obj, TlsCreds):
        raise TlsError(f"Object with id '{creds_id}' is not TLS credentials")
    if obj.endpoint != endpoint:
        raise TlsError(f"Expected TLS credentials for a {endpoint} endpoint")
    return obj


def client_session(
    objects: TlsObjects, params: Mapping[str, Any], uri_host: str | None
) -> TlsSession:
    """migration_tls_client_create: ``tls-hostname`` overrides the host of the URI."""
    creds = _creds(objects, params["tls-creds"], "client")
    hostname = params.get("tls-hostname") or uri_host or None
    return TlsSession(creds, hostname=hostname)


def server_session(objects: TlsObjects, params: Mapping[str, Any]) -> TlsSession:
    creds = _creds(objects, params["tls-creds"], "server")
    authz_id = params.get("tls-authz") or None
    return TlsSession(creds, authz_id=authz_id, objects=objects)


def tls_enabled(params: Mapping[str, Any]) -> bool:
    """migrate_use_tls: a non-empty ``tls-creds``."""
    return bool(params.get("tls-creds"))


# -- the session -------------------------------------------------------------------------------

# TLS 1.3 suites, AES-GCM first as in GnuTLS's NORMAL; PSK needs a SHA-256 one.
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
_context_cache: dict[tuple[int, str], Any] = {}
_context_lock = threading.Lock()


def _context(creds: TlsCreds) -> Any:
    """The OpenSSL context of ``creds`` (built once per object: it reads the files)."""
    key = (id(creds), creds.endpoint)
    with _context_lock:
        entry = _context_cache.get(key)
        if entry is None or entry[0] is not creds:
            entry = (creds, _build_context(creds))
            _context_cache[key] = entry
        return entry[1]


def _build_context(creds: TlsCreds) -> Any:
    from migemu.emulator.migration import openssl

    server = creds.endpoint == "server"
    ctx = openssl.Context(server)
    if creds.kind == "x509":
        ctx.ciphers(b"HIGH:!aNULL:!PSK:!SRP", TLS13_SUITES)
        assert creds.ca_cert is not None
        ctx.load_ca(creds.ca_cert)
        if creds.cert is not None and creds.key is not None:
            ctx.load_cert(creds.cert, creds.key)
        # GnuTLS requests a client certificate but does not require one, and checks the
        # peer only after the handshake: the same here (_check_certificate).
        ctx.verify_peer_after_handshake()
    elif creds.kind == "psk":
        ctx.ciphers(b"ECDHE-PSK:DHE-PSK:PSK", TLS13_SUITES)
        if server:
            psk_file = creds.psk_file
            assert psk_file is not None

            def lookup(name: str) -> bytes | None:
                try:
                    return lookup_psk(psk_file, name)
                except TlsError:
                    return None

            ctx.psk_server(lookup)
        else:
            assert creds.psk_key is not None
            ctx.psk_client(creds.username or PSK_DEFAULT_USERNAME, creds.psk_key)
    else:  # anon: anonymous DH, TLS 1.2 only (TLS 1.3 has no anonymous key exchange)
        ctx.max_tls12()
        ctx.ciphers(b"aNULL:@SECLEVEL=0")
        if server:
            ctx.dh_auto()
    return ctx


# X509_V_ERR_* codes that GnuTLS reports as GNUTLS_CERT_SIGNER_NOT_FOUND / REVOKED.
_SIGNER_NOT_FOUND = {2, 18, 19, 20, 21}
_REVOKED = {23}


def _check_certificate(session_ssl: Any, session: TlsSession) -> None:
    """qcrypto_tls_session_check_certificate, in its order and with its texts."""
    peer = session_ssl.peer_certificate()
    if peer is None:
        raise TlsError("Verify failed: No certificate was found.")
    code = session_ssl.verify_result()
    if code != 0:
        reason = "The certificate is not trusted"
        if code in _SIGNER_NOT_FOUND:
            reason = "The certificate hasn't got a known issuer"
        if code in _REVOKED:
            reason = "The certificate has been revoked"
        raise TlsError(reason)
    peername = peer.subject()
    if session.authz_id is not None:
        assert session.objects is not None
        authz = session.objects.get(session.authz_id)
        if authz is None:
            raise TlsError(f"Cannot find QAuthZ object ID {session.authz_id}")
        if not isinstance(authz, AuthzSimple):
            raise TlsError(f"Object '{session.authz_id}' is not a QAuthZ subclass")
        if not authz.is_allowed(peername):
            raise TlsError(f"TLS x509 authz check for {peername} is denied")
    if session.hostname is not None:
        if not _matches_hostname(peer, session.hostname):
            raise TlsError(f"Certificate does not match the hostname {session.hostname}")
    elif session.creds.endpoint == "client":
        raise TlsError("No hostname for certificate validation")


def _matches_hostname(peer: Any, hostname: str) -> bool:
    """gnutls_x509_crt_check_hostname: an IP against IP SANs, a name against DNS SANs (or
    the CN when the certificate has none)."""
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return bool(peer.matches_host(hostname))
    return bool(peer.matches_ip(hostname))


def _address(view: memoryview) -> int:
    """The address of a buffer's bytes, without a copy (read-only buffers too)."""
    import numpy as np

    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


class TlsStream:
    """A TLS session on a connected socket, the ``_Stream`` a ``Link`` writes and reads.

    ``shutdown`` shuts the raw socket down, which wakes a thread blocked in a TLS read,
    write or handshake (the read returns EOF and OpenSSL fails): cancel keeps working.
    """

    # QEMU's qio_channel_tls texts; GnuTLS maps every push/pull failure to EIO.
    write_error = "Cannot write to TLS channel"
    read_error = "Cannot read from TLS channel"
    MAX_WRITE = 1 << 20

    def __init__(self, sock: socket.socket, ssl: Any) -> None:
        self.sock = sock
        self.ssl = ssl
        self.version = ssl.version()
        self.cipher = ssl.cipher()

    def send(self, data: Any) -> int:
        from migemu.emulator.migration.openssl import OpenSSLError

        view = memoryview(data).cast("B")[: self.MAX_WRITE]
        if not len(view):
            return 0
        try:
            return int(self.ssl.write(_address(view), len(view)))
        except OpenSSLError as err:
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from err

    def recv_into(self, buf: memoryview) -> int:
        from migemu.emulator.migration.openssl import OpenSSLError

        view = memoryview(buf).cast("B")
        if not len(view):
            return 0
        try:
            return int(self.ssl.read(_address(view), len(view)))
        except OpenSSLError as err:
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from err

    def shutdown(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setblocking(False)
            while self.sock.recv(65536):  # nothing unread: close() then sends no RST
                pass
        self.sock.close()
        self.ssl.free()


def handshake(sock: socket.socket, session: TlsSession) -> TlsStream:
    """Run the handshake on ``sock`` (blocking) and the checks QEMU runs after it."""
    from migemu.emulator.migration import openssl

    sni = None
    if session.creds.kind == "x509" and session.hostname:
        try:
            ipaddress.ip_address(session.hostname)
        except ValueError:
            sni = session.hostname
    ssl = openssl.Session(_context(session.creds), sock.fileno(), sni)
    try:
        ssl.handshake()
    except openssl.OpenSSLError as err:
        ssl.free()
        raise TlsError(f"TLS handshake failed: {_gnutls_text(err, session)}") from err
    try:
        if session.creds.kind == "x509" and session.creds.verify_peer:
            _check_certificate(ssl, session)
    except TlsError:
        ssl.free()
        raise
    return TlsStream(sock, ssl)


def _gnutls_text(err: Any, session: TlsSession) -> str:
    """What GnuTLS (QEMU) reports for the handshake failure OpenSSL reports (recorded from
    QEMU 7.2 pairs: tests/qtest/test_tls.py)."""
    from migemu.emulator.migration import openssl

    if err.kind == openssl.SSL_ERROR_SYSCALL or "unexpected eof" in err.reason.lower():
        if not err.errno:
            return "The TLS connection was non-properly terminated."
        return "Error in the push function." if err.errno == 32 else "Error in the pull function."
    text = err.reason.lower()
    if session.creds.endpoint == "client" and "alert" in text:
        # QEMU's server never sends an alert (its channel closes the connection), so its
        # client sees the connection end; OpenSSL's server sends one: report the former.
        return "The TLS connection was non-properly terminated."
    if any(w in text for w in ("wrong version", "packet length", "http", "unknown protocol")):
        return "An unexpected TLS packet was received."  # not TLS at all (a plain stream)
    if session.creds.endpoint == "server" and session.creds.kind == "psk":
        # A bad binder (other key) or an unknown username: GnuTLS's text for both.
        return "An illegal parameter has been received."
    if "alert" in text:
        return "A TLS fatal alert has been received."
    if "decrypt" in text or "bad record mac" in text:
        return "Decryption has failed."
    if "no shared cipher" in text or "no suitable" in text or "no ciphers" in text:
        return "Could not negotiate a supported cipher suite."
    return "An unexpected TLS packet was received."
