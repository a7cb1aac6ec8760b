"""Bad input written straight onto the socket: the server answers as containerd's Go server
does, or drops only that connection, and keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from google.protobuf import wrappers_pb2

from zeropod_core.api._pb.ttrpc import request_pb2
from zeropod_core.ttrpc import CallContext, Client, Code, Server, Unary
from zeropod_core.ttrpc.framing import (
    MESSAGE_LENGTH_MAX,
    Flags,
    Frame,
    MessageType,
    encode_frame,
    read_frame,
)

SERVICE = "test.Echo"
Str = wrappers_pb2.StringValue


async def echo(ctx: CallContext, request: Str) -> Str:
    return Str(value=request.value)


class RawPeer:
    """A client that writes whatever bytes a test wants and reads raw frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def attach(cls, server: Server) -> RawPeer:
        server_sock, peer_sock = socket.socketpair()
        await server.serve_socket(server_sock)
        reader, writer = await asyncio.open_unix_connection(sock=peer_sock)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, stream_id: int, method: str = "Echo", value: str = "hi") -> None:
        payload = Str(value=value).SerializeToString()
        request = request_pb2.Request(service=SERVICE, method=method, payload=payload)
        await self.write(
            encode_frame(stream_id, MessageType.REQUEST, 0, request.SerializeToString())
        )

    async def frame(self) -> Frame:
        frame = await asyncio.wait_for(read_frame(self.reader), 5)
        assert isinstance(frame, Frame), f"expected a frame, got {frame!r}"
        return frame

    async def response(self, stream_id: int) -> request_pb2.Response:
        frame = await self.frame()
        assert (frame.stream_id, frame.type) == (stream_id, MessageType.RESPONSE)
        return request_pb2.Response.FromString(frame.payload)

    async def assert_echo_works(self, stream_id: int) -> None:
        await self.request(stream_id, value=f"after-{stream_id}")
        response = await self.response(stream_id)
        assert response.status.code == Code.OK
        assert Str.FromString(response.payload).value == f"after-{stream_id}"

    async def closed_by_server(self) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1), 5)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = Server()
    server.register(SERVICE, {"Echo": Unary(Str, Str, echo)})
    yield server
    await server.shutdown(grace=1)


async def assert_server_still_serves(server: Server) -> None:
    server_sock, client_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    async with await Client.from_socket(client_sock) as client:
        assert (await client.call(SERVICE, "Echo", Str(value="fresh"), Str)).value == "fresh"


async def test_oversized_message_gets_resource_exhausted_and_connection_survives(
    server: Server,
) -> None:
    peer = await RawPeer.attach(server)
    length = MESSAGE_LENGTH_MAX + 1
    header = length.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([1, 0])
    await peer.write(header + bytes(length))
    response = await peer.response(1)
    assert response.status.code == Code.RESOURCE_EXHAUSTED
    assert response.status.message == (
        f"message length {length} exceed maximum message size of {MESSAGE_LENGTH_MAX}"
    )
    await peer.assert_echo_works(3)
    await peer.close()
    await assert_server_still_serves(server)


@pytest.mark.parametrize("cut", [1, 5, 9])
async def test_truncated_header_then_close(server: Server, cut: int) -> None:
    peer = await RawPeer.attach(server)
    await peer.write(encode_frame(1, MessageType.REQUEST, 0, b"\x0a\x00")[:cut])
    peer.writer.write_eof()
    assert await peer.closed_by_server()
    await peer.close()
    await assert_server_still_serves(server)


async def test_truncated_payload_then_close(server: Server) -> None:
    peer = await RawPeer.attach(server)
    request = request_pb2.Request(service=SERVICE, method="Echo", payload=b"x" * 50)
    data = encode_frame(1, MessageType.REQUEST, 0, request.SerializeToString())
    await peer.write(data[: len(data) - 20])
    peer.writer.write_eof()
    assert await peer.closed_by_server()
    await peer.close()
    await assert_server_still_serves(server)


async def test_peer_vanishing_mid_frame_is_logged_not_raised(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await RawPeer.attach(server)
    await peer.write(b"\x00\x00\x00\x10\x00")
    await peer.close()
    await asyncio.sleep(0.1)
    assert any("dropping connection" in r.getMessage() for r in caplog.records)
    await assert_server_still_serves(server)


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"garbage!", b"\x0a\x05ab"])
async def test_garbage_request_payload_gets_invalid_argument(
    server: Server, garbage: bytes
) -> None:
    peer = await RawPeer.attach(server)
    await peer.write(encode_frame(1, MessageType.REQUEST, 0, garbage))
    response = await peer.response(1)
    assert response.status.code == Code.INVALID_ARGUMENT
    assert response.status.message.startswith("unmarshal request error:")
    await peer.assert_echo_works(3)
    await peer.close()


async def test_garbage_method_payload_gets_internal(server: Server) -> None:
    peer = await RawPeer.attach(server)
    request = request_pb2.Request(service=SERVICE, method="Echo", payload=b"\xff\xff\xff")
    await peer.write(encode_frame(1, MessageType.REQUEST, 0, request.SerializeToString()))
    response = await peer.response(1)
    assert response.status.code == Code.INTERNAL
    assert "error unmarshalling payload" in response.status.message
    await peer.assert_echo_works(3)
    await peer.close()


async def test_data_frame_for_unknown_stream(server: Server) -> None:
    peer = await RawPeer.attach(server)
    await peer.write(encode_frame(41, MessageType.DATA, 0, b"\x0a\x01x"))
    response = await peer.response(41)
    assert response.status.code == Code.INVALID_ARGUMENT
    assert response.status.message == "StreamID is no longer active"
    await peer.assert_echo_works(43)
    await peer.close()


async def test_response_frame_sent_to_the_server_is_ignored(server: Server) -> None:
    peer = await RawPeer.attach(server)
    bogus = request_pb2.Response(payload=b"x").SerializeToString()
    await peer.write(encode_frame(1, MessageType.RESPONSE, 0, bogus))
    await peer.write(encode_frame(1, 0x42, 0, b"future frame type"))
    # The next frame the server sends is the answer to this request: nothing for the above.
    await peer.assert_echo_works(3)
    await peer.close()
    await assert_server_still_serves(server)


async def test_even_stream_id_is_invalid(server: Server) -> None:
    peer = await RawPeer.attach(server)
    await peer.request(2)
    response = await peer.response(2)
    assert response.status.code == Code.INVALID_ARGUMENT
    assert response.status.message == "StreamID must be odd for client initiated streams"
    await peer.assert_echo_works(3)
    await peer.close()


async def test_reused_stream_id_is_invalid(server: Server) -> None:
    peer = await RawPeer.attach(server)
    await peer.assert_echo_works(5)
    await peer.request(5)
    response = await peer.response(5)
    assert response.status.code == Code.INVALID_ARGUMENT
    assert response.status.message == "StreamID cannot be re-used and must increment"
    await peer.request(3)
    assert (await peer.response(3)).status.code == Code.INVALID_ARGUMENT
    await peer.assert_echo_works(7)
    await peer.close()


async def test_request_timeout_nano_gives_deadline_exceeded(server: Server) -> None:
    async def slow(ctx: CallContext, request: Str) -> Str:
        await asyncio.sleep(10)
        return request

    server.register("test.Slow", {"Slow": Unary(Str, Str, slow)})
    peer = await RawPeer.attach(server)
    request = request_pb2.Request(
        service="test.Slow",
        method="Slow",
        payload=Str(value="x").SerializeToString(),
        timeout_nano=50_000_000,
    )
    await peer.write(encode_frame(1, MessageType.REQUEST, 0, request.SerializeToString()))
    response = await peer.response(1)
    assert response.status.code == Code.DEADLINE_EXCEEDED
    assert response.status.message == "context deadline exceeded"
    await peer.close()


async def test_unary_request_with_go_stream_flags_is_served(server: Server) -> None:
    """Go's NewStream sends REMOTE_CLOSED on requests; flags on a unary method do not matter."""
    peer = await RawPeer.attach(server)
    request = request_pb2.Request(
        service=SERVICE, method="Echo", payload=Str(value="f").SerializeToString()
    )
    await peer.write(
        encode_frame(1, MessageType.REQUEST, Flags.REMOTE_CLOSED, request.SerializeToString())
    )
    assert Str.FromString((await peer.response(1)).payload).value == "f"
    await peer.close()


async def test_unknown_service_status_message_matches_go(server: Server) -> None:
    peer = await RawPeer.attach(server)
    request = request_pb2.Request(service="containerd.task.v2.Task", method="State")
    await peer.write(encode_frame(1, MessageType.REQUEST, 0, request.SerializeToString()))
    response = await peer.response(1)
    assert (response.status.code, response.status.message) == (
        Code.UNIMPLEMENTED,
        "service containerd.task.v2.Task",
    )
    await peer.close()


async def test_many_broken_connections_do_not_leak(server: Server) -> None:
    for _ in range(20):
        peer = await RawPeer.attach(server)
        await peer.write(b"\x00\x00")
        await peer.close()
    await asyncio.sleep(0.1)
    assert server.connection_count == 0
    await assert_server_still_serves(server)
