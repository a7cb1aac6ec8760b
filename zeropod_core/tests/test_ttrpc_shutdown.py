"""Graceful shutdown: stop accepting, let running calls finish within the grace period, then
cancel what is left and close every connection."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

import zeropod_core.ttrpc as ttrpc
from zeropod_core.ttrpc import CallContext, Client, Server, Unary

SERVICE = "test.Slow"
Int = wrappers_pb2.Int64Value


class Slow:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def sleep(self, ctx: CallContext, request: Int) -> Int:
        self.started.set()
        try:
            await asyncio.sleep(request.value / 1000)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return request


@pytest.fixture
def slow() -> Slow:
    return Slow()


@pytest.fixture
async def server(slow: Slow) -> AsyncIterator[Server]:
    server = Server()
    server.register(SERVICE, {"Sleep": Unary(Int, Int, slow.sleep)})
    yield server
    await server.shutdown(grace=0)


async def connect(server: Server) -> Client:
    server_sock, client_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    return await Client.from_socket(client_sock)


async def test_running_call_finishes_within_grace(server: Server, slow: Slow) -> None:
    client = await connect(server)
    call = asyncio.create_task(client.call(SERVICE, "Sleep", Int(value=200), Int))
    await slow.started.wait()
    await server.shutdown(grace=5)
    assert (await call).value == 200
    assert not slow.cancelled
    assert server.connection_count == 0
    await client.close()


async def test_new_requests_during_shutdown_are_refused(server: Server, slow: Slow) -> None:
    client = await connect(server)
    call = asyncio.create_task(client.call(SERVICE, "Sleep", Int(value=300), Int))
    await slow.started.wait()
    shutdown = asyncio.create_task(server.shutdown(grace=5))
    await asyncio.sleep(0.05)
    with pytest.raises(ttrpc.Unavailable, match="server closed"):
        await client.call(SERVICE, "Sleep", Int(value=0), Int)
    assert (await call).value == 300
    await shutdown
    await client.close()


async def test_calls_past_the_grace_period_are_cancelled(server: Server, slow: Slow) -> None:
    client = await connect(server)
    call = asyncio.create_task(client.call(SERVICE, "Sleep", Int(value=60_000), Int))
    await slow.started.wait()
    await server.shutdown(grace=0.1)
    assert slow.cancelled
    with pytest.raises(ttrpc.ConnectionClosed):
        await call
    await client.close()


async def test_idle_connections_close_at_once_and_listener_stops(server: Server) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as tmp:
        path = Path(tmp) / "s.sock"
        await server.serve_unix(path)
        client = await Client.connect(path)
        assert (await client.call(SERVICE, "Sleep", Int(value=0), Int)).value == 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.shutdown(grace=5)
        assert loop.time() - started < 1
        with pytest.raises((ConnectionError, FileNotFoundError)):
            await asyncio.open_unix_connection(str(path))
        with pytest.raises(ttrpc.ConnectionClosed):
            await client.call(SERVICE, "Sleep", Int(value=0), Int)
        await client.close()
    with pytest.raises(RuntimeError, match="shut down"):
        await server.serve_unix(Path(tmp) / "again.sock")


async def test_shutdown_is_idempotent(server: Server) -> None:
    await server.shutdown(grace=0)
    await server.shutdown(grace=0)


async def test_server_as_context_manager(slow: Slow) -> None:
    async with Server() as server:
        server.register(SERVICE, {"Sleep": Unary(Int, Int, slow.sleep)})
        client = await connect(server)
        assert (await client.call(SERVICE, "Sleep", Int(value=1), Int)).value == 1
    assert server.connection_count == 0
    await client.close()
