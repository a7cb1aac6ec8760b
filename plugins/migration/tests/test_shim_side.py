"""The shim's side of migration: lean imports, the overlay upper dir, the incoming image."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from zeropod_core.model import ContainerInfo
from zeropod_migration.annotations import (
    INCOMING_FILE,
    LIVE_FILE,
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
