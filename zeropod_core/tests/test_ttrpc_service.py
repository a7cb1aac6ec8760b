"""Method tables built from generated service descriptors, served end to end: the zeropod
node API (with its SubscribeStatus stream) and the containerd Task service."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from google.protobuf import empty_pb2

import zeropod_core.ttrpc as ttrpc
from zeropod_core.api import TASK_SERVICE, ZEROPOD_SHIM_SERVICE, task, zeropod_shim
from zeropod_core.ttrpc import CallContext, Client, Server, ServerStreaming, Unary
from zeropod_core.ttrpc.service import service_methods, snake_case

SHIM = zeropod_shim.DESCRIPTOR.services_by_name["Shim"]
TASK = task.DESCRIPTOR.services_by_name["Task"]


class NodeApi:
    """GetStatus and SubscribeStatus only: Metrics is left unimplemented on purpose."""

    async def GetStatus(
        self, ctx: CallContext, request: zeropod_shim.ContainerRequest
    ) -> zeropod_shim.ContainerStatus:
        if request.id != "c1":
            raise ttrpc.NotFound(f"container {request.id} not found")
        return zeropod_shim.ContainerStatus(id="c1", phase=zeropod_shim.RUNNING)

    async def subscribe_status(
        self, ctx: CallContext, request: zeropod_shim.SubscribeStatusRequest
    ) -> AsyncIterator[zeropod_shim.ContainerStatus]:
        for phase in (zeropod_shim.RUNNING, zeropod_shim.SCALED_DOWN):
            yield zeropod_shim.ContainerStatus(id="c1", phase=phase)


class TaskApi:
    async def connect(self, ctx: CallContext, request: task.ConnectRequest) -> task.ConnectResponse:
        return task.ConnectResponse(shim_pid=1, task_pid=2, version="2")

    async def close_io(self, ctx: CallContext, request: task.CloseIORequest) -> empty_pb2.Empty:
        return empty_pb2.Empty()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    server = Server()
    server.register(ZEROPOD_SHIM_SERVICE, service_methods(SHIM, NodeApi()))
    server.register(TASK_SERVICE, service_methods(TASK, TaskApi()))
    server_sock, client_sock = socket.socketpair()
    await server.serve_socket(server_sock)
    client = await Client.from_socket(client_sock)
    yield client
    await client.close()
    await server.shutdown(grace=1)


def test_method_kinds_follow_the_descriptor() -> None:
    methods = service_methods(SHIM, NodeApi())
    assert set(methods) == {"GetStatus", "SubscribeStatus"}
    assert isinstance(methods["GetStatus"], Unary)
    assert methods["GetStatus"].request_type is zeropod_shim.ContainerRequest
    stream = methods["SubscribeStatus"]
    assert isinstance(stream, ServerStreaming)
    assert stream.response_type is zeropod_shim.ContainerStatus


@pytest.mark.parametrize(
    ("name", "snake"),
    [("ResizePty", "resize_pty"), ("CloseIO", "close_io"), ("State", "state")],
)
def test_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


async def test_descriptor_built_service_round_trip(client: Client) -> None:
    status = await client.call(
        ZEROPOD_SHIM_SERVICE,
        "GetStatus",
        zeropod_shim.ContainerRequest(id="c1"),
        zeropod_shim.ContainerStatus,
    )
    assert status.phase == zeropod_shim.RUNNING
    with pytest.raises(ttrpc.NotFound, match="container c2 not found"):
        await client.call(
            ZEROPOD_SHIM_SERVICE,
            "GetStatus",
            zeropod_shim.ContainerRequest(id="c2"),
            zeropod_shim.ContainerStatus,
        )


async def test_subscribe_status_stream(client: Client) -> None:
    stream = await client.server_stream(
        ZEROPOD_SHIM_SERVICE,
        "SubscribeStatus",
        zeropod_shim.SubscribeStatusRequest(),
        zeropod_shim.ContainerStatus,
    )
    phases = [status.phase async for status in stream]
    assert phases == [zeropod_shim.RUNNING, zeropod_shim.SCALED_DOWN]


async def test_unimplemented_rpc_of_a_registered_service(client: Client) -> None:
    with pytest.raises(ttrpc.Unimplemented, match=r"^method Metrics$"):
        await client.call(
            ZEROPOD_SHIM_SERVICE,
            "Metrics",
            zeropod_shim.MetricsRequest(),
            zeropod_shim.MetricsResponse,
        )


async def test_task_service_snake_case_handlers(client: Client) -> None:
    reply = await client.call(
        TASK_SERVICE, "Connect", task.ConnectRequest(id="c1"), task.ConnectResponse, timeout=5
    )
    assert (reply.shim_pid, reply.task_pid, reply.version) == (1, 2, "2")
    await client.call(TASK_SERVICE, "CloseIO", task.CloseIORequest(id="c1"), empty_pb2.Empty)
    with pytest.raises(ttrpc.Unimplemented):
        await client.call(TASK_SERVICE, "State", task.StateRequest(id="c1"), task.StateResponse)


async def test_concurrent_stream_and_calls(client: Client) -> None:
    async def status() -> int:
        reply = await client.call(
            ZEROPOD_SHIM_SERVICE,
            "GetStatus",
            zeropod_shim.ContainerRequest(id="c1"),
            zeropod_shim.ContainerStatus,
        )
        return int(reply.phase)

    stream = await client.server_stream(
        ZEROPOD_SHIM_SERVICE,
        "SubscribeStatus",
        zeropod_shim.SubscribeStatusRequest(),
        zeropod_shim.ContainerStatus,
    )
    results = await asyncio.gather(status(), status(), status())
    assert list(results) == [int(zeropod_shim.RUNNING)] * 3
    assert len([s async for s in stream]) == 2
