"""The byte-counting proxy: bytes forwarded unchanged both ways, counted, classified."""

from __future__ import annotations

import asyncio

import pytest

from migemu.tools.wireproxy import WireProxy


async def echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data[::-1] if data.startswith(b"REV") else data)
            await writer.drain()
        writer.close()  # EOF from the client: answer with ours

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_counts_both_directions_and_classifies():
    server, port = await echo_server()
    proxy = WireProxy("127.0.0.1", port)
    await proxy.start()
    try:
        payloads = {
            "main": b"QEVM" + bytes(range(256)) * 4000,
            "multifd": bytes.fromhex("11223344") + b"x" * 3_000_000,
            "unknown": b"REVabc",
        }
        for kind, payload in payloads.items():
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            expected = payload[::-1] if kind == "unknown" else payload
            assert echoed == expected
        assert await proxy.wait_idle(10)
        conns = proxy.summary()["connections"]
        assert [c["kind"] for c in conns] == ["main", "multifd", "unknown"]
        for c, payload in zip(conns, payloads.values(), strict=True):
            assert c["up"] == c["down"] == len(payload)
        assert proxy.up_bytes == sum(len(p) for p in payloads.values()) == proxy.down_bytes
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


async def test_unreachable_destination_closes_client():
    s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = s.sockets[0].getsockname()[1]
    s.close()
    await s.wait_closed()
    proxy = WireProxy("127.0.0.1", port)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"QEVMdata")
        try:  # the proxy aborts the connection it cannot forward: reset or EOF
            assert await asyncio.wait_for(reader.read(), 10) == b""
        except ConnectionResetError:
            pass
        writer.close()
    finally:
        await proxy.close()


def test_refuses_non_loopback_targets():
    with pytest.raises(ValueError, match="loopback"):
        WireProxy("192.0.2.1", 4444)
