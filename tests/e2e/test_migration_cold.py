"""Cold migration between two lab containerds on this machine (no Kubernetes yet).

Node A and node B are each a private containerd with its own image root, and each pod has
its own pod/client namespaces. A sleeping counter app on A (its memory holds a counter and
``APP_ALLOC_MIB`` of random bytes it can verify, and it wrote a file into its own rootfs) is
pulled by B's side over the mutual-TLS image service of A's manager; a container created on
B with the migrate annotation starts *scaled down* from that image, and the first connection
restores it: the counter continues, the memory checks out, the file is there. Then the source
is removed and nothing of it is left on A.

Both containerds run with the criu plugin's defaults: the mounts a dump made external
(runc's masked folders, the recreated tmpfs mounts) and the network namespace it was dumped
in travel in the image's ``zeropod-dump.json``, which B's restore reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zeropod_core.lab import images
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer, PrivateContainerd, lab_base
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.manager import LabManager
from zeropod_core.lab.netns import PodNetwork

pytestmark = pytest.mark.containerd

MIGRATE = "zeropod.ctrox.dev/migrate"
ALLOC_MIB = "32"


def _stack_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (containerd, runc and network namespaces)"
    missing = [t for t in ("containerd", "ctr", "runc", "ip", "criu") if shutil.which(t) is None]
    return f"missing {', '.join(missing)}: run scripts/setup" if missing else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Node:
    name: str
    containerd: PrivateContainerd
    manager: LabManager
    tls_dir: Path
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Node, Node]]:
    """Two "nodes": a containerd and a manager each, certificates of one cluster CA."""
    reason = _stack_missing()
    if reason:
        pytest.skip(reason)
    from zeropod_migration.tls import ClusterCA

    ca = ClusterCA.create()
    started: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            base = lab_base(f"zeropod-mig-{name}")
            containerd = PrivateContainerd.start(base)
            containerd.import_image(images.build(images.counter_app_spec()))
            containerd.node_socket_dir.mkdir(parents=True, exist_ok=True)
            tls_dir = base / "tls"
            ca.issue(name, ["127.0.0.1"]).save(tls_dir)
            port = _free_port()
            manager = LabManager.start(containerd.node_socket_dir, base, env={
                "ZEROPOD_MIGRATION_LISTEN": f"127.0.0.1:{port}",
                "ZEROPOD_MIGRATION_TLS_DIR": str(tls_dir), "ZEROPOD_NODE_NAME": name,
                "ZEROPOD_IMAGE_ROOT": str(containerd.image_root),
                "ZEROPOD_HOUSEKEEPING_INTERVAL": "3600"})
            started.append(Node(name, containerd, manager, tls_dir, port))
        yield started[0], started[1]
    finally:
        for node in started:
            node.manager.stop()
            node.containerd.stop()
            shutil.rmtree(node.containerd.base, ignore_errors=True)


@pytest.fixture
def networks() -> Iterator[tuple[PodNetwork, PodNetwork]]:
    a, b = PodNetwork.create("zpma"), PodNetwork.create("zpmb")
    try:
        yield a, b
    finally:
        a.delete()
        b.delete()


def _run_counter(node: Node, net: PodNetwork, container_id: str,
                 **annotations: str) -> LabContainer:
    return node.containerd.run(
        images.COUNTER_APP, container_id, runtime=ZEROPOD_RUNTIME, netns=net.pod_path,
        annotations={"zeropod.ctrox.dev/scaledown-duration": "1s", MIGRATE: container_id,
                     **annotations},
        env={"APP_ALLOC_MIB": ALLOC_MIB})


def _get(net: PodNetwork, path: str = "/") -> dict[str, object]:
    body: dict[str, object] = http_get(net.client_path, net.pod_ip, 8080, path, timeout=30).json()
    return body


def _exec(node: Node, container_id: str, *argv: str) -> str:
    return node.containerd.ctr("task", "exec", "--exec-id", f"x{time.monotonic_ns()}",
                               container_id, *argv).stdout


def _wait_image(node: Node, container_id: str, timeout: float = 15.0) -> Path:
    """The sleeping container's image is complete and its shim recorded its files' folder."""
    base = node.containerd.image_root / container_id
    deadline = time.monotonic() + timeout
    while not ((base / "snapshot" / "inventory.img").exists() and (base / "source.json").exists()):
        assert time.monotonic() < deadline, f"no complete image of {container_id} on {node.name}"
        time.sleep(0.02)
    return base


def _sleeping_source(node: Node, net: PodNetwork, container_id: str, note: str,
                     text: str) -> tuple[LabContainer, int, Path]:
    """A counter app that answered a few requests, wrote ``text`` into ``note`` in its own
    filesystem (the exec wakes it), and is asleep again with a complete image: the
    container, its last count and its image folder."""
    container = _run_counter(node, net, container_id)
    wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
    for _ in range(3):
        count = int(str(_get(net)["count"]))
    _exec(node, container_id, "/usr/bin/python3", "-c", f"open({note!r}, 'w').write({text!r})")
    net.wait_asleep(timeout=20)
    return container, count, _wait_image(node, container_id)


def _pull(source: Node, target: Node, source_id: str, target_id: str) -> object:
    """What target's manager does when it claims a migration: pull the image over mTLS."""
    from zeropod_migration.receive import receive_image
    from zeropod_migration.tls import NodeCredentials

    return asyncio.run(receive_image(
        source.address, NodeCredentials.load(target.tls_dir), source_id,
        target.containerd.image_root, target_id, source_label=f"{source.name}/{source_id}"))


def test_a_sleeping_container_moves_to_another_node_without_starting(
        nodes: tuple[Node, Node], networks: tuple[PodNetwork, PodNetwork]) -> None:
    node_a, node_b = nodes
    net_a, net_b = networks
    source, count, base_a = _sleeping_source(node_a, net_a, "mig-src", "/var-note.txt",
                                             "written on node a")

    received = _pull(node_a, node_b, "mig-src", "mig-dst")
    assert received.ports == (8080,)  # type: ignore[attr-defined]
    target = _run_counter(node_b, net_b, "mig-dst")
    try:
        # the target starts asleep: nothing runs in its pod until the first connection
        assert net_b.pod_pids() == []
        assert target.status() == "RUNNING"
        assert int(str(_get(net_b)["count"])) == count + 1  # restored with its memory
        assert _get(net_b, "/crc") == {"crc_ok": True, "mib": int(ALLOC_MIB)}
        assert _exec(node_b, "mig-dst", "/usr/bin/python3", "-c",
                     "print(open('/var-note.txt').read(), end='')") == "written on node a"
        snapshot_b = node_b.containerd.image_root / "mig-dst" / "snapshot"
        assert not snapshot_b.exists() or not any(snapshot_b.iterdir())  # consumed
    finally:
        target.remove()
        source.remove()
    assert not base_a.exists(), f"left on node a: {list(base_a.rglob('*'))}"
    assert not (node_b.containerd.image_root / "mig-dst").exists()


def _starts_fresh(node: Node, net: PodNetwork, container_id: str) -> None:
    """A container with the migrate annotation but no image starts as a new app, and
    nothing of it is left afterwards."""
    target = _run_counter(node, net, container_id)
    try:
        wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
        assert _get(net)["count"] == 2  # a fresh app: only wait_for_http asked before
    finally:
        target.remove()
    assert not (node.containerd.image_root / container_id).exists()


def test_without_an_image_the_target_starts_fresh(
        nodes: tuple[Node, Node], networks: tuple[PodNetwork, PodNetwork]) -> None:
    _starts_fresh(nodes[1], networks[1], "mig-fresh")


def test_the_manager_reports_the_image_service(nodes: tuple[Node, Node]) -> None:
    for node in nodes:
        health = json.loads(node.manager.get("/healthz"))
        assert health["capabilities"]["migration_service"] == f"serving on {node.address}"


def test_when_the_source_is_unreachable_the_target_starts_fresh(
        nodes: tuple[Node, Node], networks: tuple[PodNetwork, PodNetwork]) -> None:
    """The source node's manager is down: the pull fails, nothing is left, the target
    container starts as a new app."""
    from zeropod_migration.imagefs import TransferError
    from zeropod_migration.receive import receive_image
    from zeropod_migration.tls import NodeCredentials

    _, node_b = nodes
    _, net_b = networks
    with pytest.raises(TransferError, match="UNAVAILABLE"):
        asyncio.run(receive_image(f"127.0.0.1:{_free_port()}",
                                  NodeCredentials.load(node_b.tls_dir), "mig-gone",
                                  node_b.containerd.image_root, "mig-new", timeout_s=5))
    assert not (node_b.containerd.image_root / "mig-new").exists()
    _starts_fresh(node_b, net_b, "mig-new")


def test_a_sleeping_container_moves_on_the_same_node(
        nodes: tuple[Node, Node], networks: tuple[PodNetwork, PodNetwork]) -> None:
    """Same node: the image is renamed, not transferred; files and memory come along."""
    from zeropod_migration.annotations import SourceInfo
    from zeropod_migration.receive import adopt_local_image

    node_a, _ = nodes
    net_1, net_2 = networks
    source, count, base = _sleeping_source(node_a, net_1, "same-src", "/note.txt", "same node")
    info = SourceInfo.load(base)
    assert info is not None and info.migrate_data
    received = adopt_local_image(node_a.containerd.image_root, "same-src", "same-dst",
                                 upper_dir=Path(info.upper_dir))
    assert received.ports == (8080,)
    source.remove()
    target = _run_counter(node_a, net_2, "same-dst")
    try:
        assert int(str(_get(net_2)["count"])) == count + 1
        assert _exec(node_a, "same-dst", "/usr/bin/python3", "-c",
                     "print(open('/note.txt').read(), end='')") == "same node"
    finally:
        target.remove()
    leftovers = [p.name for p in node_a.containerd.image_root.iterdir()
                 if p.name.startswith("same-")]
    assert leftovers == []
