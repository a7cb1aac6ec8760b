"""The shim's side of migration: lean imports, the overlay upper dir, the incoming image."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from zeropod_core.model import ContainerInfo
from zeropod_migration.annotations import INCOMING_FILE, IncomingInfo
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
