"""The shim's side of migration: lean imports, the overlay upper dir, the incoming image."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from zeropod_core.model import ContainerInfo
from zeropod_migration import shim_plugin
from zeropod_migration.annotations import (
    INCOMING_FILE,
    LIVE_FILE,
    LIVE_MIGRATE,
    LIVE_PENDING,
    IncomingInfo,
    live_key,
)
from zeropod_migration.overlay import move_into, upper_dir
from zeropod_migration.shim_plugin import IncomingMigrator


def test_the_shim_plugin_imports_no_grpc_tls_or_compression() -> None:
    code = ("import sys, zeropod_migration.shim_plugin\n"
            "heavy = [m for m in ('grpc', 'cryptography', 'zstandard', 'google.protobuf', "
            "'pycriu') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


def test_upper_dir_is_read_from_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "99 30 0:52 / /run/bundle\\040x/rootfs rw,relatime - overlay overlay "
        "rw,lowerdir=/l1:/l2,upperdir=/snap/9/fs,workdir=/snap/9/work\n")
    assert upper_dir(Path("/run/bundle x/rootfs"), str(mountinfo)) == Path("/snap/9/fs")
    assert upper_dir(Path("/proc"), str(mountinfo)) is None
    assert upper_dir(Path("/elsewhere"), str(mountinfo)) is None


def test_move_into_replaces_what_is_there(tmp_path: Path) -> None:
    source, upper = tmp_path / "src", tmp_path / "upper"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "app.conf").write_text("new")
    (source / "note").write_text("moved")
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "old.conf").write_text("old")
    assert move_into(source, upper) == 2
    assert sorted(p.name for p in upper.rglob("*")) == ["app.conf", "etc", "note"]
    assert list(source.iterdir()) == []


def test_incoming_is_one_shot_and_needs_a_complete_image(tmp_path: Path) -> None:
    info = ContainerInfo(id="c2", bundle=str(tmp_path / "bundle"), namespace="ns")
    snapshot = tmp_path / "images" / "c2" / "snapshot"
    migrator = IncomingMigrator(info, tmp_path / "images")
    assert asyncio.run(migrator.incoming()) is None  # nothing arrived: a fresh start
    snapshot.mkdir(parents=True)
    IncomingInfo(ports=(8080,), source="node-a/c1").save(snapshot)
    assert asyncio.run(migrator.incoming()) is None  # no inventory.img: incomplete image
    assert not snapshot.exists()  # ... removed
    snapshot.mkdir(parents=True)
    (snapshot / "inventory.img").write_bytes(b"x")
    IncomingInfo(ports=(8080,), source="node-a/c1").save(snapshot)
    incoming = asyncio.run(migrator.incoming())
    assert incoming is not None and incoming.ports == (8080,)
    assert not (snapshot / INCOMING_FILE).exists()
    assert asyncio.run(migrator.incoming()) is None


def _live_image(snapshot: Path) -> None:
    snapshot.mkdir(parents=True)
    (snapshot / "inventory.img").write_bytes(b"x")
    (snapshot / LIVE_FILE).write_text('{"page_server": ["127.0.0.1", 4242]}')
    IncomingInfo(ports=(8080,), source="node-a/c1").save(snapshot)


async def test_a_live_arrival_waits_in_create_and_wakes_at_once(tmp_path: Path) -> None:
    """The target manager announced the arrival (.live/<key>): incoming() waits until the
    image is complete, takes it into the container's folder and asks for a restore at once;
    the page-server note stays for the criu plugin."""
    info = ContainerInfo(id="c3", bundle=str(tmp_path / "bundle"), namespace="ns",
                         pod_name="web-2", pod_namespace="shop", container_name="app")
    images = tmp_path / "images"
    pending = images / LIVE_PENDING / live_key("shop", "web-2", "app", "c3")
    pending.mkdir(parents=True)
    migrator = IncomingMigrator(info, images, live=True)
    waiting = asyncio.ensure_future(migrator.incoming())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    staging = pending / "staging"
    _live_image(staging)
    staging.rename(pending / "snapshot")  # as the pull does: complete, then in place
    incoming = await asyncio.wait_for(waiting, 10)
    assert incoming is not None and incoming.wake and incoming.ports == (8080,)
    assert (images / "c3" / "snapshot" / LIVE_FILE).is_file()
    assert not pending.exists()


async def test_a_called_off_live_arrival_is_a_fresh_start(tmp_path: Path) -> None:
    info = ContainerInfo(id="c4", bundle=str(tmp_path / "bundle"), namespace="ns")
    images = tmp_path / "images"
    pending = images / LIVE_PENDING / "c4"  # outside Kubernetes the key is the id
    pending.mkdir(parents=True)
    waiting = asyncio.ensure_future(IncomingMigrator(info, images, live=True).incoming())
    await asyncio.sleep(0.1)
    pending.rmdir()
    assert await asyncio.wait_for(waiting, 10) is None
    assert not (images / "c4").exists()


async def _fake_manager(socket: Path, answer: dict[str, object], delay_s: float = 0.0,
                        before: Callable[[dict[str, object]], None] | None = None,
                        ) -> tuple[asyncio.Server, list[dict[str, object]]]:
    """A node API socket that answers every POST with ``answer`` after ``delay_s``."""
    asked: list[dict[str, object]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        request = json.loads(await reader.readexactly(length))
        asked.append(request)
        if before is not None:
            before(request)
        await asyncio.sleep(delay_s)
        body = json.dumps(answer).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, str(socket)), asked


async def test_the_manager_announces_a_live_arrival_and_create_waits(tmp_path: Path) -> None:
    """Under Kubernetes the target manager announces the arrival while it answers the
    shim's question ("live": true); the shim then waits for the image as above."""
    info = ContainerInfo(id="c5", bundle=str(tmp_path / "bundle"), namespace="ns",
                         pod_name="web-3", pod_namespace="shop", container_name="app")
    images = tmp_path / "images"
    pending = images / LIVE_PENDING / live_key("shop", "web-3", "app", "c5")
    server, asked = await _fake_manager(tmp_path / "manager.sock", {"image": False,
                                                                    "live": True},
                                        before=lambda _: pending.mkdir(parents=True))
    async with server:
        migrator = IncomingMigrator(info, images, live=True,
                                    manager_socket=str(tmp_path / "manager.sock"))
        waiting = asyncio.ensure_future(migrator.incoming())
        await asyncio.sleep(0.3)
        assert not waiting.done() and asked[0]["stage"] == "arrival"
        _live_image(pending / "staging")
        (pending / "staging").rename(pending / "snapshot")
        incoming = await asyncio.wait_for(waiting, 10)
    assert incoming is not None and incoming.wake


async def test_a_stop_of_a_live_migrating_container_waits_for_the_manager(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = ContainerInfo(id="c6", bundle=str(tmp_path / "bundle"), namespace="ns",
                         pod_name="web-4", pod_namespace="shop", container_name="app")
    socket_path = tmp_path / "manager.sock"
    monkeypatch.setattr(shim_plugin, "_manager_socket", str(socket_path))
    shim_plugin.zeropod_container_created(info, {LIVE_MIGRATE: frozenset({"app"})})
    try:
        assert shim_plugin.zeropod_stopping_running(info) is None  # no manager: no hold
        server, asked = await _fake_manager(socket_path, {"handed_over": True}, 0.5)
        async with server:
            holding = shim_plugin.zeropod_stopping_running(info)
            assert holding is not None
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(holding, 10)
            assert asyncio.get_running_loop().time() - started >= 0.5  # held until it said
        assert asked == [{"stage": "departure", "container_id": "c6",
                          "container_name": "app", "pod_name": "web-4",
                          "pod_namespace": "shop"}]
        other = ContainerInfo(id="c7", bundle="", namespace="ns", pod_name="web-4",
                              pod_namespace="shop", container_name="sidecar")
        shim_plugin.zeropod_container_created(other, {LIVE_MIGRATE: frozenset({"app"})})
        assert shim_plugin.zeropod_stopping_running(other) is None  # not listed
        shim_plugin.zeropod_container_deleted(other)
    finally:
        shim_plugin.zeropod_container_deleted(info)
