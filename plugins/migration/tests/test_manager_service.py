"""The image service inside a real ``zeropod-manager`` process, as a node runs it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from test_image_service import make_image

from zeropod_core.lab.manager import LabManager
from zeropod_migration.service import pull_image
from zeropod_migration.tls import ClusterCA, NodeCredentials


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_manager_serves_images_with_a_node_certificate_it_issued(
        tmp_path: Path) -> None:
    ca = ClusterCA.create()
    tls_dir = tmp_path / "tls"
    ca.save(tls_dir)  # the CA key is there: the manager issues its own node certificate
    port = _free_port()
    (tmp_path / "s").mkdir()
    manager = LabManager.start(tmp_path / "s", tmp_path, env={
        "ZEROPOD_LOAD_PLUGINS": "zeropod-migration",
        "ZEROPOD_MIGRATION_LISTEN": f"127.0.0.1:{port}",
        "ZEROPOD_MIGRATION_TLS_DIR": str(tls_dir), "ZEROPOD_NODE_NAME": "node-a",
        "ZEROPOD_IMAGE_ROOT": str(tmp_path / "images")})
    try:
        health = json.loads(manager.get("/healthz"))
        assert health["capabilities"]["migration_service"] == f"serving on 127.0.0.1:{port}"
        live = health["capabilities"]["live_migration"]
        assert isinstance(live["available"], bool) and (live["available"] or live["reason"])
        assert NodeCredentials.load(tls_dir).node_name == "node-a"
        make_image(tmp_path / "images", "c1", random_mib=1)
        client = ca.issue("node-b", ["127.0.0.1"])
        result = await pull_image(f"127.0.0.1:{port}", client, "c1", tmp_path / "b" / "snapshot")
        assert result.files == 4
    finally:
        manager.stop()
    assert manager.process.returncode == 0


def test_without_tls_material_the_manager_runs_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    manager = LabManager.start(tmp_path / "s", tmp_path, env={
        "ZEROPOD_LOAD_PLUGINS": "zeropod-migration",
        "ZEROPOD_MIGRATION_TLS_DIR": str(tmp_path / "nothing-here")})
    try:
        status = json.loads(manager.get("/healthz"))["capabilities"]["migration_service"]
    finally:
        manager.stop()
    assert status.startswith("off: ") and "nothing-here" in status


@pytest.mark.parametrize("value", ["8090", "host:port", ":1"])
def test_a_malformed_listen_address_is_named(value: str) -> None:
    from zeropod_migration.settings import MigrationSettings

    with pytest.raises(ValueError, match="ZEROPOD_MIGRATION_LISTEN"):
        MigrationSettings.from_mapping({"ZEROPOD_MIGRATION_LISTEN": value})


def _fake_proc(tmp_path: Path, *, uffd: bool, pipe_max: int, cap_eff: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "sys/vm").mkdir(parents=True)
    (proc / "sys/fs").mkdir(parents=True)
    (proc / "self").mkdir()
    if uffd:
        (proc / "sys/vm/unprivileged_userfaultfd").write_text("0\n")
    (proc / "sys/fs/pipe-max-size").write_text(f"{pipe_max}\n")
    (proc / "self/status").write_text(f"Name:\tx\nCapEff:\t{cap_eff}\n")
    return proc


def test_live_migration_support_says_why_not(tmp_path: Path) -> None:
    from zeropod_migration.capabilities import live_migration_support

    no_resource, full = "000001fffeffffff", "000001ffffffffff"
    cases = [((False, 4 << 20, full), False, "userfaultfd"),
             ((True, 1 << 20, no_resource), False, "pipe-max-size"),
             ((True, 1 << 20, full), True, ""),
             ((True, 4 << 20, no_resource), True, "")]
    for index, ((uffd, pipe_max, caps), available, reason) in enumerate(cases):
        proc = _fake_proc(tmp_path / str(index), uffd=uffd, pipe_max=pipe_max, cap_eff=caps)
        result = live_migration_support(proc)
        assert result["available"] is available and reason in str(result["reason"]), result


def test_a_node_that_cannot_do_live_migration_refuses_up_front(tmp_path: Path) -> None:
    """Both sides of a live migration check the node before anything starts."""
    from zeropod_migration.live import LiveMigrationUnavailable, check_node

    proc = tmp_path / "proc"
    (proc / "sys/fs").mkdir(parents=True)
    (proc / "sys/fs/pipe-max-size").write_text("1048576\n")
    with pytest.raises(LiveMigrationUnavailable, match="no userfaultfd"):
        check_node(proc)
