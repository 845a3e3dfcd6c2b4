"""Connections of one migration and the "no IO after an error" rule (emulator layer).

Every connection of a migration -- the main channel and each multifd channel, on either side
-- is a ``Link`` bound to one ``ErrorLatch``. The first error (or a cancel) latches: it is
kept as the migration's error, every link is shut down so blocked reads and writes return,
and from then on every ``send``/``recv`` raises instead of touching the socket (the seed
series' "don't do IO after an error"). ``connect``/``listen`` wrap sockets and ``exec:``
pipes, with QEMU 7.2's error texts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from migemu.emulator.migration import faults
from migemu.emulator.migration.info import inet_socket_address, unix_socket_address
from migemu.emulator.migration.uri import MigrationAddress
from migemu.emulator.unixsock import owner_only
from migemu.multifd.errors import UNEXPECTED_EOF, ChannelClosed, MultiFDError, PeerBroken

if TYPE_CHECKING:
    from migemu.emulator.migration.tls import TlsSession, TlsStream

Buffer = bytes | bytearray | memoryview
FILE_POLL_MS = 100  # a file/pipe transfer notices a shutdown within this
FILE_CHUNK = 1 << 20  # bytes per write(2) on a file or pipe


class ErrorLatch:
    """The first error of a migration; firing it shuts every registered link down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._error: MultiFDError | None = None
        self._closers: list[Callable[[], None]] = []
        self.fired = threading.Event()

    @property
    def error(self) -> MultiFDError | None:
        return self._error

    @property
    def failed(self) -> bool:
        return self._error is not None

    def register(self, closer: Callable[[], None]) -> None:
        with self._lock:
            if self._error is None:
                self._closers.append(closer)
                return
        closer()

    def fail(self, error: MultiFDError) -> bool:
        """Latch ``error`` if it is the first; returns whether it was."""
        with self._lock:
            if self._error is not None:
                return False
            # A copy: the original, once raised, carries a traceback whose frames would keep
            # the failing thread's locals (views of guest RAM) alive as long as the latch.
            self._error = type(error)(error.desc)
            closers, self._closers = self._closers, []
        self.fired.set()
        for closer in closers:
            with contextlib.suppress(OSError):
                closer()
        return True

    def check(self) -> None:
        """Raise the latched error (as ``ChannelClosed``): no more IO."""
        if self._error is not None:
            raise ChannelClosed(self._error.desc)


class _Stream(Protocol):
    def send(self, data: Buffer) -> int: ...
    def recv_into(self, buf: memoryview) -> int: ...
    def shutdown(self) -> None: ...
    def close(self) -> None: ...


class _SocketStream:
    write_error = "Unable to write to socket"
    read_error = "Unable to read from socket"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: Buffer) -> int:
        return self.sock.send(data)

    def sendmsg(self, buffers: Sequence[Buffer]) -> int:
        return self.sock.sendmsg(buffers)

    def recv_into(self, buf: memoryview) -> int:
        return self.sock.recv_into(buf)

    def shutdown(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


class _PipeStream:
    """One direction of an ``exec:`` child: its stdin (source) or stdout (destination)."""

    write_error = "Unable to write to command"
    read_error = "Unable to read from command"

    def __init__(self, proc: subprocess.Popen[bytes], fd: int) -> None:
        self.proc = proc
        self.fd = fd

    def send(self, data: Buffer) -> int:
        return os.write(self.fd, data)

    def recv_into(self, buf: memoryview) -> int:
        return os.readv(self.fd, [buf])

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def close(self) -> None:
        self.shutdown()
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()


class _FileStream:
    """``fd:`` on a descriptor that is no socket: a file or a pipe (a save file).

    The descriptor's file description may be shared with the process that passed it, so it
    stays blocking (O_NONBLOCK would change it for that process too). A regular file never
    blocks for long; on a pipe every read and write first polls with a short timeout and
    writes at most PIPE_BUF bytes (which a pipe reported writable takes without blocking),
    so that ``shutdown()`` (the latch firing, a cancel) ends a transfer that a stalled pipe
    would otherwise block forever. After it, writes fail with EPIPE and reads see EOF, as on
    a shut-down socket.
    """

    write_error = "Unable to write to file"
    read_error = "Unable to read from file"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._closed = False
        self._shut = False
        try:
            self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            self._regular = False
        self._chunk = FILE_CHUNK if self._regular else select.PIPE_BUF

    def _ready(self, events: int) -> bool:
        """Wait until the descriptor is ready; False once shut down."""
        if self._regular:
            return not self._shut
        poller = select.poll()
        poller.register(self.fd, events)
        while not self._shut:
            if poller.poll(FILE_POLL_MS):
                return True
        return False

    def send(self, data: Buffer) -> int:
        if not self._ready(select.POLLOUT):
            raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))
        return os.write(self.fd, memoryview(data)[: self._chunk])

    def recv_into(self, buf: memoryview) -> int:
        if not self._ready(select.POLLIN):
            return 0
        return os.readv(self.fd, [buf])

    def shutdown(self) -> None:
        self._shut = True

    def close(self) -> None:
        self._shut = True
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


def fd_stream(fd: int) -> _SocketStream | _FileStream:
    """The stream of a migration descriptor, as ``qio_channel_new_fd`` picks its channel."""
    try:
        is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        is_socket = False
    if is_socket:
        sock = socket.socket(fileno=fd)
        sock.setblocking(True)
        return _SocketStream(sock)
    return _FileStream(fd)


class Link:
    """One migration connection; all IO goes through the latch."""

    def __init__(
        self,
        stream: _SocketStream | _PipeStream | _FileStream | TlsStream,
        latch: ErrorLatch,
        name: str,
    ) -> None:
        self.stream = stream
        self.latch = latch
        self.name = name
        self.bytes_sent = 0
        self.bytes_received = 0
        self._closed = False
        self._pending_tls: TlsSession | None = None
        latch.register(self._shutdown)
        self.record = faults.track(self)

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.shutdown()

    def start_tls(self, session: TlsSession) -> None:
        """Turn this connection into a TLS one (handshake and peer checks, blocking).

        A failure raises ``TlsError`` with QEMU's text without latching it (the destination
        drops the connection and goes on listening; the source fails with it); a cancel
        during the handshake shuts the socket down and raises the latched error instead.
        """
        from migemu.emulator.migration.tls import TlsError, handshake

        self.latch.check()
        if not isinstance(self.stream, _SocketStream):
            raise TlsError("TLS needs a socket connection")
        try:
            self.stream = handshake(self.stream.sock, session)
        except TlsError:
            self.latch.check()
            raise

    def defer_tls(self, session: TlsSession) -> None:
        """Run ``start_tls`` at this link's first IO, in the thread that does it: each
        multifd channel handshakes in its own thread and sends its greeting right after,
        as QEMU's multifd_tls_channel_connect does (a destination that reads one channel's
        greeting before accepting the next would otherwise wait for the source forever).
        A failure latches as the migration's error."""
        self._pending_tls = session

    def _tls_first(self) -> None:
        session, self._pending_tls = self._pending_tls, None
        if session is None:
            return
        from migemu.emulator.migration.tls import TlsError

        try:
            self.start_tls(session)
        except TlsError as err:
            raise self._broken(err.desc) from err

    def send(self, data: Buffer) -> None:
        """Write all of ``data``; a failure latches ``Unable to write to …: <reason>``."""
        if self._pending_tls is not None:
            self._tls_first()
        view = memoryview(data).cast("B")
        while view:
            self.latch.check()
            faults.on_io(self, "send")
            try:
                n = self.stream.send(view)
            except OSError as err:
                raise self._broken(f"{self.stream.write_error}: {err.strerror}") from err
            self.bytes_sent += n
            view = view[n:]

    def sendv(self, buffers: Sequence[Buffer]) -> None:
        """Write several buffers back to back (one ``sendmsg`` when it can)."""
        if self._pending_tls is not None:
            self._tls_first()
        if not isinstance(self.stream, _SocketStream):
            for b in buffers:
                self.send(b)
            return
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        while views:
            self.latch.check()
            faults.on_io(self, "send")
            try:
                n = self.stream.sendmsg(views[:64])
            except OSError as err:
                raise self._broken(f"{self.stream.write_error}: {err.strerror}") from err
            self.bytes_sent += n
            while n and views:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0

    def recv_into(self, buf: memoryview) -> int:
        """Read some bytes (0 at EOF); a failure latches ``Unable to read from …``."""
        if self._pending_tls is not None:
            self._tls_first()
        self.latch.check()
        faults.on_io(self, "recv")
        try:
            n = self.stream.recv_into(buf)
        except OSError as err:
            raise self._broken(f"{self.stream.read_error}: {err.strerror}") from err
        if n == 0 and self.latch.failed:
            self.latch.check()
        self.bytes_received += n
        return n

    def recv_exactly_into(self, buf: memoryview) -> None:
        """Fill all of ``buf``; the peer closing first is ``PeerBroken`` (a record cut
        short), like a decoder seeing EOF inside a payload."""
        pos = 0
        while pos < len(buf):
            n = self.recv_into(buf[pos:])
            if n == 0:
                raise PeerBroken(UNEXPECTED_EOF)
            pos += n

    def _broken(self, desc: str) -> MultiFDError:
        if self.latch.failed:
            return ChannelClosed(self.latch.error.desc if self.latch.error else desc)
        err = PeerBroken(desc)
        self.latch.fail(err)
        return err

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self.stream.close()


class ConnectError(Exception):
    """Opening a connection failed; ``desc`` is QEMU's text."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


def _family(address: MigrationAddress) -> int:
    if address.ipv4 and not address.ipv6:
        return socket.AF_INET
    if address.ipv6 and not address.ipv4:
        return socket.AF_INET6
    return socket.AF_UNSPEC


def _resolve(address: MigrationAddress, host: str) -> list[tuple]:  # type: ignore[type-arg]
    try:
        return socket.getaddrinfo(
            host, address.port, _family(address), socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
    except socket.gaierror as err:
        raise ConnectError(
            f"address resolution failed for {address.host}:{address.port}: {err.strerror}"
        ) from err


def connect(address: MigrationAddress, latch: ErrorLatch, name: str) -> Link:
    """Open one outgoing connection (blocking), as ``socket_connect``/``exec`` do."""
    if address.kind == "exec":
        proc = subprocess.Popen(
            ["/bin/sh", "-c", address.command], stdin=subprocess.PIPE, close_fds=True
        )
        assert proc.stdin is not None
        fd = os.dup(proc.stdin.fileno())
        proc.stdin.close()
        return Link(_PipeStream(proc, fd), latch, name)
    if address.kind == "fd":
        if address.fd < 0:
            raise ConnectError(f"File descriptor named '{address.path}' has not been found")
        return Link(fd_stream(address.fd), latch, name)
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address.path)
        except OSError as err:
            sock.close()
            raise ConnectError(f"Failed to connect to '{address.path}': {err.strerror}") from err
        return Link(_SocketStream(sock), latch, name)
    if address.kind != "tcp":
        raise ConnectError(f"migemu cannot open {address.kind} connections")
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in _resolve(address, address.host or "localhost"):
        sock = socket.socket(family, kind, proto)
        try:
            sock.connect(sockaddr)
        except OSError as err:
            sock.close()
            last = err
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Link(_SocketStream(sock), latch, name)
    reason = last.strerror if last is not None else "no address"
    raise ConnectError(f"Failed to connect to '{address.describe()}': {reason}")


class Listener:
    """A listening socket for an incoming migration (``tcp:`` or ``unix:``)."""

    def __init__(self, address: MigrationAddress) -> None:
        self.address = address
        if address.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.path)
            try:
                with owner_only():
                    sock.bind(address.path)
            except OSError as err:
                sock.close()
                raise ConnectError(
                    f"Failed to bind socket to {address.path}: {err.strerror}"
                ) from err
        elif address.kind == "tcp":
            # An empty host listens on loopback only: migemu never exposes a port by default.
            infos = _resolve(address, address.host or "127.0.0.1")
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as err:
                sock.close()
                raise ConnectError(f"Failed to find an available port: {err.strerror}") from err
        else:
            raise ConnectError(f"migemu cannot listen on {address.kind} addresses")
        sock.listen(16)
        self.sock = sock
        self._closed = False
        if address.kind == "unix":
            self._socket_address = unix_socket_address(address.path)
        else:
            host, port = sock.getsockname()[:2]
            self._socket_address = inet_socket_address(
                host, port, ipv6=sock.family == socket.AF_INET6
            )

    def socket_address(self) -> dict[str, object]:
        """The listener as query-migrate's ``socket-address`` entry shows it (also after
        it stopped accepting: QEMU keeps the list until the migration completes)."""
        return dict(self._socket_address)

    def wait_pending(self, timeout_s: float) -> bool:
        """Whether a connection is waiting to be accepted (within ``timeout_s``)."""
        if self._closed:
            return False
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        return bool(ready)

    def accept(self, latch: ErrorLatch, name: str) -> Link:
        latch.check()
        try:
            sock, _ = self.sock.accept()
        except OSError as err:
            latch.check()
            raise PeerBroken(f"Failed to accept connection: {err.strerror}") from err
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Link(_SocketStream(sock), latch, name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.address.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)


class ExecSource:
    """``-incoming exec:CMD``: the stream is the standard output of ``sh -c CMD``.

    It stands in for a ``Listener`` with a single connection (exec carries no multifd
    channels) and no socket address to report.
    """

    def __init__(self, address: MigrationAddress) -> None:
        self.address = address
        self.proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    def socket_address(self) -> dict[str, object] | None:
        return None

    def wait_pending(self, timeout_s: float) -> bool:
        return False

    def accept(self, latch: ErrorLatch, name: str) -> Link:
        latch.check()
        if self.proc is not None:
            raise PeerBroken("exec: migration carries a single channel")
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", self.address.command], stdout=subprocess.PIPE, close_fds=True
        )
        assert self.proc.stdout is not None
        fd = os.dup(self.proc.stdout.fileno())
        self.proc.stdout.close()
        return Link(_PipeStream(self.proc, fd), latch, name)

    def close(self) -> None:
        self._closed = True


class FdSource:
    """``migrate-incoming fd:N`` / ``-incoming fd:N``: the stream comes from one descriptor
    (a socket, a file or a pipe). Like ``ExecSource`` it has a single connection and no
    socket address; the descriptor is the migration's from now on and closed with it."""

    def __init__(self, address: MigrationAddress) -> None:
        self.address = address
        self._taken = False
        self._closed = False

    def socket_address(self) -> dict[str, object] | None:
        return None

    def wait_pending(self, timeout_s: float) -> bool:
        return False

    def accept(self, latch: ErrorLatch, name: str) -> Link:
        latch.check()
        if self._taken:
            raise PeerBroken("fd: migration carries a single channel")
        self._taken = True
        return Link(fd_stream(self.address.fd), latch, name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._taken:  # never read: still ours to release
            self._taken = True
            with contextlib.suppress(OSError):
                os.close(self.address.fd)
