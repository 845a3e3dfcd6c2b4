"""A small ctypes binding to the system's OpenSSL (libssl.so.3), for migration TLS (emulator layer).

Why not ``ssl`` or pyOpenSSL: QEMU 7.2 (GnuTLS) sends no TLS 1.3 session tickets, and a QEMU
source never reads its main channel, so a ticket our server sent would sit unread in the
source's socket and its close() would reset the connection, losing the stream's tail: the
server must set ``num_tickets`` to 0. Python 3.11's ``ssl`` has that but no PSK callbacks;
pyOpenSSL (through ``cryptography``'s bindings) has PSK but not ``SSL_CTX_set_num_tickets``.
The system library (the one Python's own ``ssl`` module loads) has all of it and no new
dependency; ctypes releases the GIL in every call, so multifd channels encrypt in parallel.
Only what migration needs is declared; ``Context``/``Session`` are thin and blocking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from typing import Any

c_void_p, c_int, c_long, c_char_p, c_uint = (
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_long,
    ctypes.c_char_p,
    ctypes.c_uint,
)

TLS1_2_VERSION = 0x0303
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
SSL_CTRL_SET_DH_AUTO = 118
SSL_CTRL_SET_READ_AHEAD = 41
READ_BUFFER_BYTES = 256 * 1024
SSL_OP_NO_TICKET = 1 << 14
SSL_VERIFY_NONE = 0
SSL_VERIFY_PEER = 1
SSL_FILETYPE_PEM = 1
SSL_ERROR_SSL = 1
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6
X509_V_OK = 0
XN_FLAG_RFC2253 = 0x1110317

VERIFY_CB = ctypes.CFUNCTYPE(c_int, c_int, c_void_p)
PSK_SERVER_CB = ctypes.CFUNCTYPE(c_uint, c_void_p, c_char_p, ctypes.POINTER(ctypes.c_ubyte), c_uint)
PSK_CLIENT_CB = ctypes.CFUNCTYPE(
    c_uint, c_void_p, c_char_p, c_void_p, c_uint, ctypes.POINTER(ctypes.c_ubyte), c_uint
)


class OpenSSLError(Exception):
    """An OpenSSL call failed; ``reason`` is OpenSSL's text, ``kind`` its SSL_ERROR_*."""

    def __init__(self, reason: str, kind: int = SSL_ERROR_SSL, errno: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.errno = errno


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "TLS_method": (c_void_p, []),
    "SSL_CTX_new": (c_void_p, [c_void_p]),
    "SSL_CTX_free": (None, [c_void_p]),
    "SSL_CTX_ctrl": (c_long, [c_void_p, c_int, c_long, c_void_p]),
    "SSL_CTX_set_options": (ctypes.c_uint64, [c_void_p, ctypes.c_uint64]),
    "SSL_CTX_set_num_tickets": (c_int, [c_void_p, ctypes.c_size_t]),
    "SSL_CTX_set_ciphersuites": (c_int, [c_void_p, c_char_p]),
    "SSL_CTX_set_cipher_list": (c_int, [c_void_p, c_char_p]),
    "SSL_CTX_load_verify_locations": (c_int, [c_void_p, c_char_p, c_char_p]),
    "SSL_CTX_use_certificate_chain_file": (c_int, [c_void_p, c_char_p]),
    "SSL_CTX_use_PrivateKey_file": (c_int, [c_void_p, c_char_p, c_int]),
    "SSL_CTX_set_verify": (None, [c_void_p, c_int, VERIFY_CB]),
    "SSL_CTX_set_psk_server_callback": (None, [c_void_p, PSK_SERVER_CB]),
    "SSL_CTX_set_psk_client_callback": (None, [c_void_p, PSK_CLIENT_CB]),
    "SSL_new": (c_void_p, [c_void_p]),
    "SSL_free": (None, [c_void_p]),
    "SSL_set_fd": (c_int, [c_void_p, c_int]),
    "SSL_set_connect_state": (None, [c_void_p]),
    "SSL_set_accept_state": (None, [c_void_p]),
    "SSL_ctrl": (c_long, [c_void_p, c_int, c_long, c_void_p]),
    "SSL_do_handshake": (c_int, [c_void_p]),
    "SSL_read": (c_int, [c_void_p, c_void_p, c_int]),
    "SSL_write": (c_int, [c_void_p, c_void_p, c_int]),
    "SSL_get_error": (c_int, [c_void_p, c_int]),
    "SSL_has_pending": (c_int, [c_void_p]),
    "SSL_CTX_set_default_read_buffer_len": (None, [c_void_p, ctypes.c_size_t]),
    "SSL_get_verify_result": (c_long, [c_void_p]),
    "SSL_get1_peer_certificate": (c_void_p, [c_void_p]),
    "SSL_get_version": (c_char_p, [c_void_p]),
    "SSL_get_current_cipher": (c_void_p, [c_void_p]),
    "SSL_CIPHER_get_name": (c_char_p, [c_void_p]),
}
_CRYPTO_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "ERR_get_error": (ctypes.c_ulong, []),
    "ERR_clear_error": (None, []),
    "ERR_error_string_n": (None, [ctypes.c_ulong, c_char_p, ctypes.c_size_t]),
    "X509_free": (None, [c_void_p]),
    "X509_get_subject_name": (c_void_p, [c_void_p]),
    "X509_NAME_print_ex": (c_int, [c_void_p, c_void_p, c_int, ctypes.c_ulong]),
    "X509_check_host": (c_int, [c_void_p, c_char_p, ctypes.c_size_t, c_uint, c_void_p]),
    "X509_check_ip_asc": (c_int, [c_void_p, c_char_p, c_uint]),
    "X509_verify_cert_error_string": (c_char_p, [c_long]),
    "BIO_s_mem": (c_void_p, []),
    "BIO_new": (c_void_p, [c_void_p]),
    "BIO_free": (c_int, [c_void_p]),
    "BIO_read": (c_int, [c_void_p, c_void_p, c_int]),
}

_libs: tuple[Any, Any] | None = None
_lock = threading.Lock()


def _load() -> tuple[Any, Any]:
    global _libs
    with _lock:
        if _libs is None:
            ssl_name = ctypes.util.find_library("ssl") or "libssl.so.3"
            crypto_name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
            libssl = ctypes.CDLL(ssl_name, use_errno=True)
            libcrypto = ctypes.CDLL(crypto_name, use_errno=True)
            for lib, table in ((libssl, _SIGNATURES), (libcrypto, _CRYPTO_SIGNATURES)):
                for name, (restype, argtypes) in table.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
            _libs = (libssl, libcrypto)
        return _libs


def _last_error() -> str:
    _, crypto = _load()
    code = crypto.ERR_get_error()
    last = code
    while code:
        last = code
        code = crypto.ERR_get_error()
    if not last:
        return ""
    buf = ctypes.create_string_buffer(256)
    crypto.ERR_error_string_n(last, buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def available() -> bool:
    try:
        _load()
    except (OSError, AttributeError):
        return False
    return True


class Context:
    """An SSL_CTX; callbacks passed to it are kept alive with it."""

    def __init__(self, server: bool) -> None:
        ssl, _ = _load()
        self._ssl = ssl
        self.server = server
        self.ptr = ssl.SSL_CTX_new(ssl.TLS_method())
        if not self.ptr:
            raise OpenSSLError(_last_error() or "SSL_CTX_new failed")
        self._keep: list[Any] = []
        ssl.SSL_CTX_ctrl(self.ptr, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, None)
        ssl.SSL_CTX_set_options(self.ptr, SSL_OP_NO_TICKET)
        ssl.SSL_CTX_ctrl(self.ptr, SSL_CTRL_SET_SESS_CACHE_MODE, 0, None)
        ssl.SSL_CTX_set_num_tickets(self.ptr, 0)
        # Read ahead into a big buffer: one read() returns many records (see Session.read).
        ssl.SSL_CTX_ctrl(self.ptr, SSL_CTRL_SET_READ_AHEAD, 1, None)
        ssl.SSL_CTX_set_default_read_buffer_len(self.ptr, READ_BUFFER_BYTES)

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            self._ssl.SSL_CTX_free(ptr)

    def _check(self, ok: int, what: str) -> None:
        if ok != 1:
            raise OpenSSLError(f"{what}: {_last_error()}")

    def max_tls12(self) -> None:
        self._ssl.SSL_CTX_ctrl(self.ptr, SSL_CTRL_SET_MAX_PROTO_VERSION, TLS1_2_VERSION, None)

    def dh_auto(self) -> None:
        """Built-in DH parameters (GnuTLS's ANON-DH needs a DH group on the server)."""
        self._ssl.SSL_CTX_ctrl(self.ptr, SSL_CTRL_SET_DH_AUTO, 1, None)

    def ciphers(self, tls12: bytes, tls13: bytes | None = None) -> None:
        self._check(self._ssl.SSL_CTX_set_cipher_list(self.ptr, tls12), "cipher list")
        if tls13 is not None:
            self._check(self._ssl.SSL_CTX_set_ciphersuites(self.ptr, tls13), "ciphersuites")

    def load_ca(self, path: str) -> None:
        ok = self._ssl.SSL_CTX_load_verify_locations(self.ptr, path.encode(), None)
        self._check(ok, "CA")

    def load_cert(self, cert: str, key: str) -> None:
        self._check(self._ssl.SSL_CTX_use_certificate_chain_file(self.ptr, cert.encode()), "cert")
        ok = self._ssl.SSL_CTX_use_PrivateKey_file(self.ptr, key.encode(), SSL_FILETYPE_PEM)
        self._check(ok, "key")

    def verify_peer_after_handshake(self) -> None:
        """Request the peer's certificate but let the handshake finish whatever its chain:
        the caller checks ``Session.verify_result()`` afterwards (GnuTLS's order)."""
        cb = VERIFY_CB(lambda ok, store: 1)
        self._keep.append(cb)
        self._ssl.SSL_CTX_set_verify(self.ptr, SSL_VERIFY_PEER, cb)

    def psk_server(self, lookup: Callable[[str], bytes | None]) -> None:
        def callback(ssl: Any, identity: bytes | None, psk: Any, max_len: int) -> int:
            try:
                key = lookup((identity or b"").decode("utf-8", "replace"))
            except Exception:
                return 0
            if key is None or len(key) > max_len:
                return 0
            ctypes.memmove(psk, key, len(key))
            return len(key)

        cb = PSK_SERVER_CB(callback)
        self._keep.append(cb)
        self._ssl.SSL_CTX_set_psk_server_callback(self.ptr, cb)

    def psk_client(self, username: str, key: bytes) -> None:
        ident = username.encode() + b"\0"

        def callback(
            ssl: Any, hint: Any, identity: Any, max_id: int, psk: Any, max_psk: int
        ) -> int:
            if len(ident) > max_id or len(key) > max_psk:
                return 0
            ctypes.memmove(identity, ident, len(ident))
            ctypes.memmove(psk, key, len(key))
            return len(key)

        cb = PSK_CLIENT_CB(callback)
        self._keep.append(cb)
        self._ssl.SSL_CTX_set_psk_client_callback(self.ptr, cb)


class Session:
    """One SSL on a connected, blocking socket fd (the socket stays owned by the caller)."""

    def __init__(self, ctx: Context, fd: int, server_hostname: str | None = None) -> None:
        ssl, self._crypto = _load()
        self._ssl = ssl
        self.ctx = ctx  # keeps the context (and its callbacks) alive
        self.ptr = ssl.SSL_new(ctx.ptr)
        if not self.ptr:
            raise OpenSSLError(_last_error() or "SSL_new failed")
        ssl.SSL_set_fd(self.ptr, fd)
        if ctx.server:
            ssl.SSL_set_accept_state(self.ptr)
        else:
            ssl.SSL_set_connect_state(self.ptr)
            if server_hostname:
                ssl.SSL_ctrl(self.ptr, SSL_CTRL_SET_TLSEXT_HOSTNAME, 0, server_hostname.encode())

    def free(self) -> None:
        ptr, self.ptr = self.ptr, None
        if ptr:
            self._ssl.SSL_free(ptr)

    def __del__(self) -> None:
        self.free()

    def _fail(self, ret: int) -> OpenSSLError:
        kind = self._ssl.SSL_get_error(self.ptr, ret)
        reason = _last_error()
        return OpenSSLError(reason, kind, ctypes.get_errno())

    def handshake(self) -> None:
        self._crypto.ERR_clear_error()
        ret = self._ssl.SSL_do_handshake(self.ptr)
        if ret != 1:
            raise self._fail(ret)

    def write(self, address: int, n: int) -> int:
        """Write ``n`` bytes at ``address``; returns how many (all, for a blocking socket)."""
        self._crypto.ERR_clear_error()
        ret = self._ssl.SSL_write(self.ptr, address, n)
        if ret <= 0:
            raise self._fail(ret)
        return int(ret)

    def read(self, address: int, n: int) -> int:
        """Read up to ``n`` bytes to ``address``; 0 at the end (close_notify or plain EOF)."""
        self._crypto.ERR_clear_error()
        ret = self._ssl.SSL_read(self.ptr, address, n)
        if ret > 0:
            # A record carries at most 16 KiB: take what is already buffered too, so a
            # caller's 256 KiB read costs one Python call, not sixteen.
            total = int(ret)
            while total < n and self._ssl.SSL_has_pending(self.ptr):
                ret = self._ssl.SSL_read(self.ptr, address + total, n - total)
                if ret <= 0:
                    break  # the error (or EOF) shows again at the next read
                total += int(ret)
            return total
        err = self._fail(ret)
        if err.kind == SSL_ERROR_ZERO_RETURN or (err.kind == SSL_ERROR_SYSCALL and not err.reason):
            return 0
        raise err

    def verify_result(self) -> int:
        return int(self._ssl.SSL_get_verify_result(self.ptr))

    def version(self) -> str:
        return (self._ssl.SSL_get_version(self.ptr) or b"").decode()

    def cipher(self) -> str:
        c = self._ssl.SSL_get_current_cipher(self.ptr)
        return (self._ssl.SSL_CIPHER_get_name(c) or b"").decode() if c else ""

    def peer_certificate(self) -> PeerCertificate | None:
        x509 = self._ssl.SSL_get1_peer_certificate(self.ptr)
        return PeerCertificate(x509) if x509 else None


class PeerCertificate:
    """The peer's leaf certificate: its DN and OpenSSL's host / IP checks."""

    def __init__(self, ptr: int) -> None:
        _, self._crypto = _load()
        self.ptr = ptr

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            self._crypto.X509_free(ptr)

    def subject(self) -> str:
        """The subject in RFC 4514 order (last RDN first), as GnuTLS prints a DN."""
        crypto = self._crypto
        bio = crypto.BIO_new(crypto.BIO_s_mem())
        try:
            crypto.X509_NAME_print_ex(
                bio, crypto.X509_get_subject_name(self.ptr), 0, XN_FLAG_RFC2253
            )
            out = bytearray()
            buf = ctypes.create_string_buffer(4096)
            while (n := crypto.BIO_read(bio, buf, len(buf))) > 0:
                out += buf.raw[:n]
            return out.decode("utf-8", "replace")
        finally:
            crypto.BIO_free(bio)

    def matches_host(self, name: str) -> bool:
        return (
            self._crypto.X509_check_host(self.ptr, name.encode(), len(name.encode()), 0, None) == 1
        )

    def matches_ip(self, address: str) -> bool:
        return self._crypto.X509_check_ip_asc(self.ptr, address.encode(), 0) == 1


def verify_error_string(code: int) -> str:
    _, crypto = _load()
    return (crypto.X509_verify_cert_error_string(code) or b"").decode()
