"""Streams: server streaming (what SubscribeStatus needs), client streaming and both, over a
real server and client, plus the frames a Go client would send."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from google.protobuf import wrappers_pb2

import zeropod_core.ttrpc as ttrpc
from zeropod_core.api._pb.ttrpc import request_pb2
from zeropod_core.ttrpc import (
    BidiStreaming,
    CallContext,
    Client,
    ClientStreaming,
    Server,
    ServerStream,
    ServerStreaming,
    server_stream,
)
from zeropod_core.ttrpc.framing import Flags, Frame, MessageType, encode_frame, read_frame

SERVICE = "test.Streams"
Str = wrappers_pb2.StringValue
Int = wrappers_pb2.Int64Value


class Streams:
    def __init__(self) -> None:
        self.subscribed = asyncio.Event()
        self.unsubscribed = asyncio.Event()

    async def count(self, ctx: CallContext, request: Int) -> AsyncIterator[Int]:
        for i in range(request.value):
            yield Int(value=i)

    async def count_then_fail(self, ctx: CallContext, request: Int) -> AsyncIterator[Int]:
        for i in range(request.value):
            yield Int(value=i)
        raise ttrpc.FailedPrecondition("container gone")

    async def forever(self, ctx: CallContext, request: Int) -> AsyncIterator[Int]:
        self.subscribed.set()
        try:
            i = 0
            while True:
                yield Int(value=i)
                i += 1
                await asyncio.sleep(0.01)
        finally:
            self.unsubscribed.set()

    async def join(self, ctx: CallContext, stream: ServerStream[Str, Str]) -> Str:
        return Str(value="+".join([message.value async for message in stream]))

    async def ignore(self, ctx: CallContext, stream: ServerStream[Str, Str]) -> Str:
        await asyncio.sleep(60)  # never reads
        return Str()

    async def shout(self, ctx: CallContext, stream: ServerStream[Str, Str]) -> None:
        async for message in stream:
            await stream.send(Str(value=message.value.upper()))


@pytest.fixture
def streams() -> Streams:
    return Streams()


@pytest.fixture
async def server(streams: Streams) -> AsyncIterator[Server]:
    server = Server()
    server.register(
        SERVICE,
        {
            "Count": ServerStreaming(Int, Int, streams.count),
            "CountThenFail": ServerStreaming(Int, Int, streams.count_then_fail),
            "Forever": ServerStreaming(Int, Int, streams.forever),
            "Join": ClientStreaming(Str, Str, streams.join),
            "Shout": BidiStreaming(Str, Str, streams.shout),
            "Ignore": ClientStreaming(Str, Str, streams.ignore),
        },
    )
    yield server
    await server.shutdown(grace=1)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    server_sock, client_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    client = await Client.from_socket(client_sock)
    yield client
    await client.close()


async def test_server_stream(client: Client) -> None:
    stream = await client.server_stream(SERVICE, "Count", Int(value=5), Int)
    assert [message.value async for message in stream] == [0, 1, 2, 3, 4]
    with pytest.raises(EOFError):
        await stream.recv()


async def test_empty_server_stream(client: Client) -> None:
    stream = await client.server_stream(SERVICE, "Count", Int(value=0), Int)
    assert [message async for message in stream] == []


async def test_server_stream_error_after_messages(client: Client) -> None:
    received: list[int] = []
    stream = await client.server_stream(SERVICE, "CountThenFail", Int(value=2), Int)
    with pytest.raises(ttrpc.FailedPrecondition, match="container gone"):
        async for message in stream:
            received.append(message.value)
    assert received == [0, 1]


async def test_streams_and_unary_calls_interleave(client: Client) -> None:
    first = await client.server_stream(SERVICE, "Count", Int(value=50), Int)
    second = await client.server_stream(SERVICE, "Count", Int(value=30), Int)
    a, b = await asyncio.gather(_collect(first), _collect(second))
    assert a == list(range(50)) and b == list(range(30))


async def _collect(stream: ttrpc.ClientStream[Int]) -> list[int]:
    return [message.value async for message in stream]


async def test_client_leaving_a_subscription_early(client: Client, streams: Streams) -> None:
    async with await client.server_stream(SERVICE, "Forever", Int(), Int) as stream:
        assert (await stream.recv()).value == 0
        assert (await stream.recv()).value == 1
    # The client stopped listening; the connection keeps working for other calls.
    assert await _collect(await client.server_stream(SERVICE, "Count", Int(value=2), Int)) == [
        0,
        1,
    ]


async def test_subscription_ends_when_the_client_disconnects(
    client: Client, streams: Streams
) -> None:
    stream = await client.server_stream(SERVICE, "Forever", Int(), Int)
    await stream.recv()
    await client.close()
    await asyncio.wait_for(streams.unsubscribed.wait(), 5)


async def test_subscription_is_cancelled_by_server_shutdown(
    server: Server, client: Client, streams: Streams
) -> None:
    stream = await client.server_stream(SERVICE, "Forever", Int(), Int)
    await stream.recv()
    await server.shutdown(grace=0.1)
    assert streams.unsubscribed.is_set()
    with pytest.raises(ttrpc.ConnectionClosed):
        async for _ in stream:
            pass


async def test_server_stream_timeout(client: Client) -> None:
    stream = await client.server_stream(SERVICE, "Forever", Int(), Int, timeout=0.2)
    with pytest.raises(ttrpc.DeadlineExceeded):
        async for _ in stream:
            pass


async def test_client_stream(client: Client) -> None:
    stream = await client.open_stream(
        SERVICE, "Join", Str, streaming_client=True, streaming_server=False
    )
    for word in ("a", "b", "c"):
        await stream.send(Str(value=word))
    await stream.close_send()
    assert (await stream.recv()).value == "a+b+c"


async def test_client_stream_with_first_message_in_the_request(client: Client) -> None:
    stream = await client.open_stream(
        SERVICE,
        "Join",
        Str,
        request=Str(value="first"),
        streaming_client=True,
        streaming_server=False,
    )
    await stream.send(Str(value="second"))
    await stream.close_send()
    assert (await stream.recv()).value == "first+second"


async def test_bidi_stream(client: Client) -> None:
    stream = await client.open_stream(
        SERVICE, "Shout", Str, streaming_client=True, streaming_server=True
    )
    await stream.send(Str(value="hi"))
    assert (await stream.recv()).value == "HI"
    await stream.send(Str(value="there"))
    assert (await stream.recv()).value == "THERE"
    await stream.close_send()
    assert [m async for m in stream] == []


async def test_sending_on_a_server_only_stream_is_refused(client: Client) -> None:
    stream = await client.server_stream(SERVICE, "Count", Int(value=1), Int)
    with pytest.raises(ttrpc.ProtocolError):
        await stream.send(Int())
    await stream.aclose()


async def test_go_client_frames_for_a_server_stream(server: Server) -> None:
    """What containerd's Go client sends for a server stream, and what it must get back."""
    server_sock, peer_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    reader, writer = await asyncio.open_unix_connection(sock=peer_sock)
    request = request_pb2.Request(
        service=SERVICE, method="Count", payload=Int(value=2).SerializeToString()
    )
    writer.write(
        encode_frame(1, MessageType.REQUEST, Flags.REMOTE_CLOSED, request.SerializeToString())
    )
    frames = [await asyncio.wait_for(read_frame(reader), 5) for _ in range(3)]
    assert all(isinstance(f, Frame) for f in frames)
    assert [(f.stream_id, f.type, f.flags) for f in frames if isinstance(f, Frame)] == [
        (1, MessageType.DATA, 0),
        (1, MessageType.DATA, 0),
        (1, MessageType.DATA, Flags.REMOTE_CLOSED | Flags.NO_DATA),
    ]
    assert isinstance(frames[1], Frame) and Int.FromString(frames[1].payload).value == 1
    writer.close()
    await writer.wait_closed()


async def test_go_client_frames_for_a_client_stream(server: Server) -> None:
    server_sock, peer_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    reader, writer = await asyncio.open_unix_connection(sock=peer_sock)
    request = request_pb2.Request(service=SERVICE, method="Join")
    writer.write(
        encode_frame(1, MessageType.REQUEST, Flags.REMOTE_OPEN, request.SerializeToString())
        + encode_frame(1, MessageType.DATA, 0, Str(value="x").SerializeToString())
        + encode_frame(1, MessageType.DATA, 0, Str(value="y").SerializeToString())
        + encode_frame(1, MessageType.DATA, Flags.REMOTE_CLOSED | Flags.NO_DATA)
    )
    frame = await asyncio.wait_for(read_frame(reader), 5)
    assert isinstance(frame, Frame) and frame.type == MessageType.RESPONSE
    response = request_pb2.Response.FromString(frame.payload)
    assert response.status.code == 0
    assert Str.FromString(response.payload).value == "x+y"
    writer.close()
    await writer.wait_closed()


async def test_handler_that_stops_reading_gets_its_stream_failed(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_stream, "FULL_TIMEOUT", 0.05)
    stream = await client.open_stream(
        SERVICE, "Ignore", Str, streaming_client=True, streaming_server=False
    )
    for i in range(server_stream.RECV_BUFFER + 2):
        await stream.send(Str(value=str(i)))
    with pytest.raises(ttrpc.ResourceExhausted, match="stream buffer full"):
        await stream.recv()
    # the connection itself is unaffected
    counted = await client.server_stream(SERVICE, "Count", Int(value=1), Int)
    assert await _collect(counted) == [0]
