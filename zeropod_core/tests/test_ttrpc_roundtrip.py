"""Unary calls through a real server and client: socketpair and unix socket, concurrency,
timeouts, metadata, error mapping across the wire and unknown services/methods."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

import zeropod_core.ttrpc as ttrpc
from zeropod_core.ttrpc import CallContext, Client, RawUnary, RPCError, Server, Unary

SERVICE = "test.Echo"
Str = wrappers_pb2.StringValue
Int = wrappers_pb2.Int64Value

ERRORS: dict[str, Exception] = {
    "not_found": ttrpc.NotFound("no such container"),
    "exists": ttrpc.AlreadyExists("already there"),
    "precondition": ttrpc.FailedPrecondition("not running"),
    "invalid": ttrpc.InvalidArgument("bad id"),
    "unimplemented": ttrpc.Unimplemented("later"),
    "unavailable": ttrpc.Unavailable("busy"),
    "internal": ttrpc.Internal("oops"),
    "runtime": RuntimeError("boom"),
    "missing_file": FileNotFoundError("no bundle"),
}


class EchoService:
    """Handlers for the tests; records the order in which sleeps finish."""

    def __init__(self) -> None:
        self.finished: list[int] = []
        self.raw_payloads: list[bytes] = []

    async def echo(self, ctx: CallContext, request: Str) -> Str:
        return Str(value=request.value)

    async def sleep(self, ctx: CallContext, request: Int) -> Int:
        await asyncio.sleep(request.value / 1000)
        self.finished.append(request.value)
        return Int(value=request.value)

    async def fail(self, ctx: CallContext, request: Str) -> Str:
        raise ERRORS[request.value]

    async def metadata(self, ctx: CallContext, request: Str) -> Str:
        values = ctx.metadata.get(request.value, ())
        return Str(value=",".join(values))

    async def deadline(self, ctx: CallContext, request: Str) -> Str:
        remaining = ctx.time_remaining()
        return Str(value="none" if remaining is None else f"{remaining:.1f}")

    async def wrong_type(self, ctx: CallContext, request: Str) -> Str:
        return Int(value=1)  # type: ignore[return-value]

    async def raw(self, ctx: CallContext, payload: bytes) -> bytes:
        self.raw_payloads.append(payload)
        return Str(value=f"{len(payload)} bytes").SerializeToString()


def make_server(service: EchoService) -> Server:
    server = Server()
    server.register(
        SERVICE,
        {
            "Echo": Unary(Str, Str, service.echo),
            "Sleep": Unary(Int, Int, service.sleep),
            "Fail": Unary(Str, Str, service.fail),
            "Metadata": Unary(Str, Str, service.metadata),
            "Deadline": Unary(Str, Str, service.deadline),
            "WrongType": Unary(Str, Str, service.wrong_type),
            "Raw": RawUnary(service.raw),
        },
    )
    return server


@pytest.fixture
def service() -> EchoService:
    return EchoService()


@pytest.fixture
async def client(service: EchoService) -> AsyncIterator[Client]:
    server = make_server(service)
    server_sock, client_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    client = await Client.from_socket(client_sock)
    yield client
    await client.close()
    await server.shutdown(grace=1)


async def test_round_trip_over_socketpair(client: Client) -> None:
    reply = await client.call(SERVICE, "Echo", Str(value="hello"), Str)
    assert reply == Str(value="hello")
    assert (await client.call(SERVICE, "Echo", Str(), Str)) == Str()


async def test_round_trip_over_unix_socket(service: EchoService) -> None:
    server = make_server(service)
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as tmp:
        path = Path(tmp) / "shim.sock"
        await server.serve_unix(path)
        async with (
            await Client.connect(f"unix://{path}") as first,
            await Client.connect(path) as second,
        ):
            replies = await asyncio.gather(
                first.call(SERVICE, "Echo", Str(value="a"), Str),
                second.call(SERVICE, "Echo", Str(value="b"), Str),
            )
            assert [r.value for r in replies] == ["a", "b"]
        await server.shutdown(grace=1)
        assert not path.exists(), "shutdown removes the socket file it created"


async def test_serve_unix_replaces_a_stale_socket_file(service: EchoService) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as tmp:
        path = os.path.join(tmp, "stale.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        server = make_server(service)
        await server.serve_unix(path)
        async with await Client.connect(path) as client:
            assert (await client.call(SERVICE, "Echo", Str(value="x"), Str)).value == "x"
        await server.shutdown(grace=1)


async def test_concurrent_calls_on_one_connection_complete_out_of_order(
    client: Client, service: EchoService
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(
        *(client.call(SERVICE, "Sleep", Int(value=ms), Int) for ms in (300, 200, 100, 0))
    )
    elapsed = loop.time() - started
    assert [r.value for r in replies] == [300, 200, 100, 0]  # each reply reached its caller
    assert service.finished == [0, 100, 200, 300]  # handlers finished in reverse order
    assert elapsed < 0.55, f"calls ran one after another ({elapsed:.2f}s)"


async def test_many_concurrent_calls(client: Client) -> None:
    replies = await asyncio.gather(
        *(client.call(SERVICE, "Echo", Str(value=str(i)), Str) for i in range(200))
    )
    assert [r.value for r in replies] == [str(i) for i in range(200)]


async def test_timeout_raises_deadline_exceeded(client: Client) -> None:
    with pytest.raises(ttrpc.DeadlineExceeded, match="context deadline exceeded"):
        await client.call(SERVICE, "Sleep", Int(value=5000), Int, timeout=0.2)
    # the connection is still good afterwards
    assert (await client.call(SERVICE, "Echo", Str(value="ok"), Str)).value == "ok"


async def test_handler_sees_the_deadline(client: Client) -> None:
    assert (await client.call(SERVICE, "Deadline", Str(), Str)).value == "none"
    reply = await client.call(SERVICE, "Deadline", Str(), Str, timeout=30)
    assert 29.0 <= float(reply.value) <= 30.0


async def test_metadata_reaches_the_handler(client: Client) -> None:
    reply = await client.call(
        SERVICE,
        "Metadata",
        Str(value="containerd-namespace"),
        Str,
        metadata={"Containerd-Namespace": "k8s.io", "other": ["a", "b"]},
    )
    assert reply.value == "k8s.io"
    reply = await client.call(
        SERVICE, "Metadata", Str(value="other"), Str, metadata={"other": ["a", "b"]}
    )
    assert reply.value == "a,b"


@pytest.mark.parametrize(
    ("key", "expected", "message"),
    [
        ("not_found", ttrpc.NotFound, "no such container"),
        ("exists", ttrpc.AlreadyExists, "already there"),
        ("precondition", ttrpc.FailedPrecondition, "not running"),
        ("invalid", ttrpc.InvalidArgument, "bad id"),
        ("unimplemented", ttrpc.Unimplemented, "later"),
        ("unavailable", ttrpc.Unavailable, "busy"),
        ("internal", ttrpc.Internal, "oops"),
        ("runtime", ttrpc.Unknown, "boom"),
        ("missing_file", ttrpc.NotFound, "no bundle"),
    ],
)
async def test_errors_cross_the_wire_as_their_codes(
    client: Client, key: str, expected: type[RPCError], message: str
) -> None:
    with pytest.raises(expected) as caught:
        await client.call(SERVICE, "Fail", Str(value=key), Str)
    assert type(caught.value) is expected
    assert str(caught.value) == message


async def test_unexpected_handler_error_is_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ttrpc.Unknown):
        await client.call(SERVICE, "Fail", Str(value="runtime"), Str)
    records = [r for r in caplog.records if r.name == "zeropod.ttrpc.server"]
    failed = [r for r in records if r.exc_info]
    assert failed, "an unexpected exception is logged with its traceback"
    assert getattr(failed[0], "rpc_method", None) == "Fail"


async def test_unknown_service_and_method_are_unimplemented(client: Client) -> None:
    with pytest.raises(ttrpc.Unimplemented, match=r"^service no\.Such$"):
        await client.call("no.Such", "Echo", Str(), Str)
    with pytest.raises(ttrpc.Unimplemented, match=r"^method Nope$"):
        await client.call(SERVICE, "Nope", Str(), Str)


async def test_wrong_response_type_is_internal(client: Client) -> None:
    with pytest.raises(ttrpc.Internal, match="unsupported response type"):
        await client.call(SERVICE, "WrongType", Str(), Str)


async def test_undecodable_request_payload_is_internal(client: Client) -> None:
    # A request whose payload is not a StringValue (bad UTF-8 in field 1).
    with pytest.raises(ttrpc.Internal, match="error unmarshalling payload"):
        await client.call(SERVICE, "Echo", wrappers_pb2.BytesValue(value=b"\xff\xfe"), Str)


async def test_raw_method_gets_the_payload_bytes(client: Client, service: EchoService) -> None:
    reply = await client.call(SERVICE, "Raw", Str(value="abc"), Str)
    assert service.raw_payloads == [Str(value="abc").SerializeToString()]
    assert reply.value == "5 bytes"


async def test_calls_after_close_fail_with_connection_closed(client: Client) -> None:
    await client.close()
    assert client.closed
    with pytest.raises(ttrpc.ConnectionClosed):
        await client.call(SERVICE, "Echo", Str(), Str)


async def test_pending_call_fails_when_the_server_goes_away(service: EchoService) -> None:
    server = make_server(service)
    server_sock, client_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    client = await Client.from_socket(client_sock)
    pending = asyncio.create_task(client.call(SERVICE, "Sleep", Int(value=10_000), Int))
    await asyncio.sleep(0.05)
    await server.shutdown(grace=0)
    with pytest.raises(ttrpc.ConnectionClosed):
        await pending
    await client.close()


def test_duplicate_service_registration_is_refused(service: EchoService) -> None:
    server = make_server(service)
    with pytest.raises(ValueError, match="duplicate service"):
        server.register(SERVICE, {})
    with pytest.raises(TypeError, match="not a ttrpc method record"):
        server.register("other", {"X": service.echo})  # type: ignore[dict-item]
