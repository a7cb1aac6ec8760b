"""The shim's node API over a real unix socket: every subscriber gets every event, and a
subscriber that stops reading neither blocks the shim nor grows without bound."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from zeropod_core import ttrpc
from zeropod_core.api import ZEROPOD_SHIM_SERVICE, zeropod_shim
from zeropod_core.hooks import ShimHooks
from zeropod_core.model import ContainerInfo, ContainerStatus, Phase, RoleName
from zeropod_core.plugins import make_plugin_manager
from zeropod_core.shim.node_api import SUBSCRIBER_QUEUE, NodeApi, NodeService

INFO = ContainerInfo(id="c1", bundle="/b", namespace="k8s.io", pod_name="web",
                     pod_namespace="shop", container_name="app")


async def _subscribe(path: str) -> ttrpc.ClientStream[zeropod_shim.ContainerStatus]:
    client = await ttrpc.Client.connect(path)
    return await client.server_stream(ZEROPOD_SHIM_SERVICE, "SubscribeStatus",
                                      zeropod_shim.SubscribeStatusRequest(),
                                      zeropod_shim.ContainerStatus)


async def test_fan_out_and_slow_subscriber(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROPOD_SOCKET_DIR", str(tmp_path))
    hooks = ShimHooks(make_plugin_manager(RoleName.SHIM, autoload=False, environ={}))
    service = NodeService(lambda: {}, hooks)
    api = NodeApi(service, "/run/containerd/s/zeropod-test-shim")
    await api.start()
    try:
        assert (tmp_path / "zeropod-test-shim.sock").exists()
        fast = await _subscribe(api.path)
        slow = await _subscribe(api.path)  # never read
        deadline = time.monotonic() + 5
        while len(service._subscribers) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        received: list[str] = []

        async def read_fast() -> None:
            async for status in fast:
                received.append(status.id)
                if len(received) == 1000:
                    return

        reader = asyncio.create_task(read_fast())
        started = time.monotonic()
        for i in range(1000):
            hooks.phase_changed(ContainerStatus(
                ContainerInfo(id=f"c{i}", bundle="/b", namespace="k8s.io"),
                Phase.SCALED_DOWN if i % 2 else Phase.RUNNING, time.time()))
            await asyncio.sleep(0)
        publish_s = time.monotonic() - started
        await asyncio.wait_for(reader, 10)
        assert received == [f"c{i}" for i in range(1000)]  # all of them, in order
        assert publish_s < 2.0  # never waited for the slow subscriber
        assert all(q.qsize() <= SUBSCRIBER_QUEUE for q in service._subscribers)
        await slow.aclose()
    finally:
        await api.close()
    assert not (tmp_path / "zeropod-test-shim.sock").exists()


async def test_live_migrate_names_an_unknown_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LiveMigrate refuses before anything happens when the shim has no such container."""
    monkeypatch.setenv("ZEROPOD_SOCKET_DIR", str(tmp_path))
    hooks = ShimHooks(make_plugin_manager(RoleName.SHIM, autoload=False, environ={}))
    api = NodeApi(NodeService(lambda: {}, hooks), "/run/containerd/s/zeropod-live-shim")
    await api.start()
    try:
        async with await ttrpc.Client.connect(api.path) as client:
            stream = await client.server_stream(
                ZEROPOD_SHIM_SERVICE, "LiveMigrate",
                zeropod_shim.LiveMigrateRequest(id="nope", page_server_port=4242),
                zeropod_shim.LiveMigrateEvent)
            with pytest.raises(ttrpc.RPCError, match="container nope: not found"):
                await anext(stream)
    finally:
        await api.close()
