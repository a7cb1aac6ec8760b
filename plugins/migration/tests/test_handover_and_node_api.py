"""The pieces of the Kubernetes-driven flow that need no cluster: the source shim's
hand-over folder, the shim's node API client against the manager's real HTTP server on a
unix socket, and the controller's settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.config import manager_socket_path
from zeropod_core.manager.http import HttpServer
from zeropod_migration.handover import HandOver, hand_over, handover_root
from zeropod_migration.nodeapi import ask_manager
from zeropod_migration.settings import MigrationSettings


def _image(root: Path, container_id: str) -> Path:
    snapshot = root / container_id / "snapshot"
    snapshot.mkdir(parents=True)
    (snapshot / "inventory.img").write_bytes(b"inv")
    (snapshot / "pages-1.img").write_bytes(os.urandom(4096))
    return snapshot


def test_the_hand_over_moves_the_image_and_copies_the_files(tmp_path: Path) -> None:
    root = tmp_path / "i"
    _image(root, "c1")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "note").write_text("mine")
    (upper / "link").symlink_to("etc/note")
    folder = hand_over(root, "c1", "app", "pod-1", "default", upper)
    assert folder == handover_root(root) / "c1" == tmp_path / "i-migrating" / "c1"
    assert not (root / "c1" / "snapshot").exists()  # moved, not copied
    assert (folder / "snapshot" / "inventory.img").read_bytes() == b"inv"
    assert (folder / "snapshot" / "upper" / "etc" / "note").read_text() == "mine"
    assert os.readlink(folder / "snapshot" / "upper" / "link") == "etc/note"
    record = HandOver.load(folder)
    assert record is not None and (record.pod_name, record.files) == ("pod-1", True)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_no_image_no_hand_over(tmp_path: Path) -> None:
    assert hand_over(tmp_path / "i", "c1", "app", "p", "default", None) is None
    assert not handover_root(tmp_path / "i").exists()


def test_an_incomplete_hand_over_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "c1").mkdir()
    assert HandOver.load(tmp_path / "c1") is None  # handover.json is written last


async def test_the_shim_asks_the_manager_over_its_unix_socket(tmp_path: Path) -> None:
    seen: list[Any] = []

    async def answer(body: bytes) -> tuple[int, str, bytes]:
        seen.append(json.loads(body))
        return 200, "application/json", json.dumps({"image": True, "ports": [8080]}).encode()

    server = HttpServer({}, {"/v1/migration": answer})
    path = str(tmp_path / "manager.sock")
    await server.start_unix(path)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        reply = await ask_manager(path, {"container_id": "c1", "pod_name": "p"})
    finally:
        await server.close()
    assert reply == {"image": True, "ports": [8080]}
    assert seen == [{"container_id": "c1", "pod_name": "p"}]


async def test_a_missing_or_refusing_manager_means_no_image(tmp_path: Path) -> None:
    reply = await ask_manager(str(tmp_path / "none.sock"), {})
    assert reply["image"] is False and "no manager node API" in reply["reason"]

    async def refuse(body: bytes) -> tuple[int, str, bytes]:
        return 400, "text/plain", b"bad request: container_id must be a non-empty string\n"

    server = HttpServer({}, {"/v1/migration": refuse})
    path = str(tmp_path / "manager.sock")
    await server.start_unix(path)
    try:
        reply = await ask_manager(path, {})
    finally:
        await server.close()
    assert reply["image"] is False and "container_id must be" in reply["reason"]


def test_the_manager_socket_is_next_to_the_shims_sockets() -> None:
    assert manager_socket_path({}) == "/run/zeropod/manager.sock"
    assert manager_socket_path({"ZEROPOD_SOCKET_DIR": "/tmp/x/zs/"}) == "/tmp/x/manager.sock"
    assert manager_socket_path({"ZEROPOD_MANAGER_SOCKET": "/a/b.sock"}) == "/a/b.sock"


def test_controller_settings() -> None:
    config = MigrationSettings.from_mapping({
        "ZEROPOD_MIGRATION_ADDRESSES": "10.0.0.5,node-a", "ZEROPOD_NODE_NAME": "node-a",
        "ZEROPOD_MIGRATION_CLAIM_TIMEOUT": "1m", "ZEROPOD_MIGRATION_FIND_TIMEOUT": "500ms"})
    assert config.advertise == "10.0.0.5"
    assert (config.claim_timeout_s, config.find_timeout_s, config.image_timeout_s) == \
        (60.0, 0.5, 60.0)
    assert config.namespace == "zeropod-system"
    with pytest.raises(ValueError, match="ZEROPOD_MIGRATION_IMAGE_TIMEOUT must be a positive"):
        MigrationSettings.from_mapping({"ZEROPOD_MIGRATION_IMAGE_TIMEOUT": "soon"})
