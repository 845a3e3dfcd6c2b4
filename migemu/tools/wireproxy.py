"""A byte-counting TCP proxy for loopback migrations (tools layer).

Placed between a migration source and its destination, it forwards every connection to the
destination unchanged and counts the bytes each direction carried: what the wire really held,
independent of the emulator's own accounting (QEMU 7.2's ``multifd-bytes`` counts pages
before compression). Each connection is classified by its first four bytes: the main stream
starts with ``QEVM``, a multifd channel with the MultiFDInit magic ``0x11223344``.
asyncio only, one event loop; it binds 127.0.0.1 and refuses anything else.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
# Pause reading one side while the other side has this much unsent: bounds the proxy's memory.
HIGH_WATER_BYTES = 4 << 20
LOW_WATER_BYTES = 1 << 20

_KINDS = {b"QEVM": "main", bytes.fromhex("11223344"): "multifd"}


@dataclass
class ConnectionCount:
    """Bytes one proxied connection carried, each way."""

    index: int
    up: int = 0  # client (migration source) -> server (destination)
    down: int = 0  # server -> client (return path, if any)
    head: bytes = b""
    opened_s: float = field(default_factory=time.monotonic)
    closed_s: float | None = None

    @property
    def kind(self) -> str:
        return _KINDS.get(self.head[:4], "unknown" if len(self.head) >= 4 else "empty")

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "kind": self.kind, "up": self.up, "down": self.down}


class _Half(asyncio.Protocol):
    """One socket of a proxied pair: what it receives is written to the peer's transport."""

    def __init__(
        self, count: ConnectionCount, upward: bool, on_closed: asyncio.Future[None]
    ) -> None:
        self.count = count
        self.upward = upward
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.on_closed = on_closed
        self._pending: list[bytes] = []  # received before the peer connected
        self._eof_pending = False
        self.lost = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER_BYTES, LOW_WATER_BYTES)

    def attach(self, peer: _Half) -> None:
        self.peer = peer
        for data in self._pending:
            self._forward(data)
        self._pending.clear()
        if self._eof_pending:
            self.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.upward:
            if len(self.count.head) < 4:
                self.count.head += data[: 4 - len(self.count.head)]
            self.count.up += len(data)
        else:
            self.count.down += len(data)
        if self.peer is None:
            self._pending.append(data)
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        if not self.peer.transport.is_closing():
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self._eof_pending = True
            return True
        self.eof = True
        peer_transport = self.peer.transport
        if self.peer.eof:  # both directions are done
            assert self.transport is not None
            self.transport.close()
            if peer_transport is not None:
                peer_transport.close()
            return False
        if peer_transport is not None and not peer_transport.is_closing():
            if peer_transport.can_write_eof():
                peer_transport.write_eof()
            else:
                peer_transport.close()
        return True  # keep our own side open: the other direction may still carry data

    # Flow control: when the peer cannot keep up, stop reading from our socket.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            if not self.peer.transport.is_closing():
                self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.peer is not None and self.peer.transport is not None:
            if exc is not None:
                self.peer.transport.abort()
            else:
                self.peer.transport.close()
        if not self.on_closed.done():
            self.on_closed.set_result(None)


class WireProxy:
    """Listens on 127.0.0.1 (an ephemeral port) and forwards each connection to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        if target_host not in (LOOPBACK, "localhost"):
            raise ValueError(f"wireproxy forwards to loopback only, not {target_host!r}")
        self.target = (LOOPBACK, target_port)
        self.connections: list[ConnectionCount] = []
        self._server: asyncio.Server | None = None
        self._closed: list[asyncio.Future[None]] = []
        self._transports: list[asyncio.Transport] = []

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def uri(self) -> str:
        return f"tcp:{LOOPBACK}:{self.port}"

    @property
    def up_bytes(self) -> int:
        return sum(c.up for c in self.connections)

    @property
    def down_bytes(self) -> int:
        return sum(c.down for c in self.connections)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._client_side, LOOPBACK, 0)
        return self.port

    def _client_side(self) -> _Half:
        loop = asyncio.get_running_loop()
        count = ConnectionCount(len(self.connections))
        self.connections.append(count)
        closed: asyncio.Future[None] = loop.create_future()
        self._closed.append(closed)
        client = _Half(count, upward=True, on_closed=closed)
        loop.create_task(self._connect_upstream(client, count))
        return client

    async def _connect_upstream(self, client: _Half, count: ConnectionCount) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._closed.append(done)
        try:
            transport, server = await loop.create_connection(
                lambda: _Half(count, upward=False, on_closed=done), *self.target
            )
        except OSError:
            done.set_result(None)
            if client.transport is not None:
                client.transport.abort()
            return
        assert isinstance(transport, asyncio.Transport)
        self._transports.append(transport)
        if client.transport is not None:
            self._transports.append(client.transport)
        server.attach(client)
        client.attach(server)
        if client.lost:  # the source hung up before we reached the destination
            transport.close()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every connection so far has closed; False on timeout."""
        pending = [f for f in self._closed if not f.done()]
        if not pending:
            return True
        _done, still = await asyncio.wait(pending, timeout=timeout_s)
        return not still

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for transport in self._transports:
            if not transport.is_closing():
                transport.abort()
        for c in self.connections:
            if c.closed_s is None:
                c.closed_s = time.monotonic()

    def summary(self) -> dict[str, object]:
        """Totals and the per-connection counts (``up`` is source -> destination)."""
        return {
            "up_bytes": self.up_bytes,
            "down_bytes": self.down_bytes,
            "connections": [c.as_dict() for c in self.connections],
        }
