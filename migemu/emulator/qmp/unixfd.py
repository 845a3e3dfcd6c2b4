"""A unix-socket transport that also reads SCM_RIGHTS descriptors (emulator layer, asyncio).

asyncio's own transports read with ``recv`` and drop ancillary data, so a QMP monitor on a
unix socket (listening or connecting) uses this one: it reads with ``recvmsg`` and hands the
descriptors that came with a chunk to the protocol's ``fds_received`` before the chunk's
bytes, as QEMU's socket chardev keeps them for the next command. Writes are buffered with
asyncio's flow control (``pause_writing``/``resume_writing``). Nothing else lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

READ_SIZE = 65536
MAX_FDS = 16  # descriptors accepted per message (QEMU: TCP_MAX_FDS)
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024

ProtocolFactory = Callable[[], asyncio.Protocol]


class UnixFdTransport(asyncio.Transport):
    """One connected AF_UNIX stream socket."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._wbuf = bytearray()
        self._closing = False
        self._closed = False
        self._reading = True
        self._writing_paused = False
        protocol.connection_made(self)
        if self._reading and not self._closing:
            loop.add_reader(self._fd, self._read_ready)

    # -- reading ----------------------------------------------------------------------------
    def _read_ready(self) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(self._sock, READ_SIZE, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._force_close(err)
            return
        for fd in fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        if flags & socket.MSG_CTRUNC:  # more descriptors than we take: refuse them all
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            fds = []
        if fds:
            handler = getattr(self._protocol, "fds_received", None)
            if handler is None:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            else:
                handler(list(fds))
        if data:
            self._protocol.data_received(data)
            return
        self._loop.remove_reader(self._fd)
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self.close()

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ----------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._wbuf:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as err:
                self._force_close(err)
                return
            data = memoryview(data)[n:]
            if not data:
                return
            self._loop.add_writer(self._fd, self._write_ready)
        self._wbuf += data
        if not self._writing_paused and len(self._wbuf) > HIGH_WATER:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            n = self._sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._force_close(err)
            return
        del self._wbuf[:n]
        if self._writing_paused and len(self._wbuf) <= LOW_WATER:
            self._writing_paused = False
            self._protocol.resume_writing()
        if not self._wbuf:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._finish(None)

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def can_write_eof(self) -> bool:
        return False

    # -- closing ----------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._wbuf:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closing = True
        self._wbuf.clear()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._finish, exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._protocol.connection_lost(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "peername":
            with contextlib.suppress(OSError):
                return self._sock.getpeername()
        if name == "sockname":
            with contextlib.suppress(OSError):
                return self._sock.getsockname()
        return default


class UnixFdServer:
    """A listening unix socket whose connections get ``UnixFdTransport``s."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: ProtocolFactory
    ) -> None:
        sock.setblocking(False)
        self._loop = loop
        self.sock = sock
        self._factory = factory
        self._closed = False
        self.transports: list[UnixFdTransport] = []
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError:
            return  # EMFILE and the like: the client waits in the backlog, we keep serving
        UnixFdTransport(self._loop, conn, self._factory())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def connect_unix(
    loop: asyncio.AbstractEventLoop, path: str, factory: ProtocolFactory
) -> UnixFdTransport:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, path)
    except OSError:
        sock.close()
        raise
    return UnixFdTransport(loop, sock, factory())


def listen_unix(
    loop: asyncio.AbstractEventLoop, path: str, factory: ProtocolFactory, backlog: int = 16
) -> UnixFdServer:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return UnixFdServer(loop, sock, factory)
