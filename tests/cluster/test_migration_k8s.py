"""Cold migration driven by Kubernetes, on the lab's real kubelet 1.20 and apiserver.

A Deployment's counter app (``APP_ALLOC_MIB`` of random memory it can verify, a counter, and
a file it writes into its own filesystem) sleeps; deleting its pod makes the source node's
manager create the ``Migration``; the replacement pod's container asks its node's manager,
which claims the ``Migration`` by ``pod-template-hash``, takes the image the source shim
handed over, and the container starts *scaled down*: the first request restores it with its
memory and its file. The failure cases end with a fresh app and nothing left behind.

The node pair is a parameter (:class:`~zeropod_core.lab.kube.migration.MigrationLab`'s
``source`` and ``target``): here both are the lab's one node, so the image is adopted by a
rename; a two-node lab passes two nodes and the image travels over mutual TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab.http import http_get
from zeropod_core.lab.kube.migration import (
    MIGRATIONS,
    MigrationLab,
    migration_lab,
    migration_phase,
    wait_for,
)

from .test_cluster import HOST_NETNS

pytestmark = pytest.mark.cluster

CLAIM_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def lab() -> Iterator[MigrationLab]:
    with migration_lab({"ZEROPOD_MIGRATION_CLAIM_TIMEOUT": f"{CLAIM_TIMEOUT_S}s"}) as running:
        yield running


def _get(ip: str, path: str = "/") -> dict[str, object]:
    body: dict[str, object] = http_get(HOST_NETNS, ip, 8080, path, timeout=60).json()
    return body


def _sleeping_pod(lab: MigrationLab, app: str, note: str) -> tuple[dict[str, Any], int]:
    """The Deployment's pod after a few requests and a file written by the app, asleep."""
    pod = lab.wait_new_pod(app)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    for _ in range(3):
        count = int(str(_get(ip)["count"]))
    lab.exec(name, "/usr/bin/python3", "-c", f"open('/note.txt', 'w').write({note!r})")
    wait_for(f"{name} asleep", lambda: lab.source.phase(name) == "SCALED_DOWN", 60, 0.1)
    return pod, count


def _nothing_left(lab: MigrationLab, *container_ids: str) -> None:
    """No image of the containers on either node, neither a checkpoint nor a hand-over, no
    transfer's staging folder and no live arrival."""
    for node in (lab.source, lab.target):
        assert node.leftovers(*container_ids) == [], f"left on {node.name}"


def test_a_sleeping_deployment_pod_moves_with_its_memory_and_files(lab: MigrationLab) -> None:
    app = lab.deployment()
    pod, count = _sleeping_pod(lab, app, "written before the move")
    old = pod["metadata"]["name"]
    old_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]

    deleted = time.monotonic()
    lab.towards_target()
    lab.cluster.kubectl("delete", "pod", old, "--wait=false")
    new = lab.wait_new_pod(app, exclude=[old])
    name, ip = new["metadata"]["name"], new["status"]["podIP"]
    # the new container started asleep: the first request restores the old one's memory
    assert int(str(_get(ip)["count"])) == count + 1
    first_response_s = time.monotonic() - deleted
    assert _get(ip, "/crc") == {"crc_ok": True, "mib": 32}
    assert lab.exec(name, "/usr/bin/python3", "-c",
                    "print(open('/note.txt').read(), end='')") == "written before the move"

    migration = lab.migration(old)
    assert migration is not None
    spec, status = migration["spec"], migration["status"]["containers"][0]
    assert (spec["sourcePod"], spec["targetPod"]) == (old, name)
    assert (spec["sourceNode"], spec["targetNode"]) == (lab.source.name, lab.target.name)
    assert spec["podTemplateHash"] == new["metadata"]["labels"]["pod-template-hash"]
    assert spec["containers"][0]["id"] == old_id and spec["containers"][0]["imageServer"]
    assert status["condition"]["phase"] == "Completed"
    assert status["pausedAt"] and status["restoredAt"] and status["migrationDuration"]
    # garbage-collected with the target pod: owned by it now
    assert [o["name"] for o in migration["metadata"]["ownerReferences"]] == [name]
    assert migration["metadata"]["finalizers"] == [
        "migration.runtime.zeropod.ctrox.dev/checkpoint-cleanup"]
    print(f"\ncold migration on {lab.source.name} -> {lab.target.name}: pod deletion to "
          f"first response {first_response_s:.2f} s, migrationDuration "
          f"{status['migrationDuration']}")
    _nothing_left(lab, old_id)

    lab.delete_deployments()  # the target pod goes, and the Migration with it (finalizer)
    wait_for("the Migration garbage-collected", lambda: lab.migration(old) is None, 120, 0.5)


def test_a_running_container_fails_its_migration_at_once(lab: MigrationLab) -> None:
    app = lab.deployment(scaledown="1h")
    pod = lab.wait_new_pod(app)
    old, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    _get(ip)
    assert lab.source.phase(old) == "RUNNING"
    lab.towards_target()
    lab.cluster.kubectl("delete", "pod", old, "--wait=false")
    migration = wait_for("the Migration", lambda: lab.migration(old), 30, 0.1)
    phase = wait_for("its phase", lambda: migration_phase(lab.migration(old)), 10, 0.1)
    assert phase == "Failed"
    reason = lab.migration(old)["status"]["containers"][0]["condition"]["reason"]  # type: ignore[index]
    assert "RUNNING" in reason
    new = lab.wait_new_pod(app, exclude=[old])
    assert _get(new["status"]["podIP"])["count"] == 1  # a fresh app
    assert migration["spec"].get("targetPod") in (None, new["metadata"]["name"])


def test_an_unclaimed_migration_times_out_and_its_image_goes(lab: MigrationLab) -> None:
    app = lab.deployment()
    pod, _ = _sleeping_pod(lab, app, "nobody wants me")
    old = pod["metadata"]["name"]
    old_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
    # scaling to zero deletes the pod and makes no replacement: nobody claims
    lab.cluster.kubectl("scale", "deployment", app, "--replicas=0")
    wait_for("the hand-over", lambda: (lab.source.handover_root / old_id).exists(), 60, 0.1)
    phase = wait_for("Unclaimed", lambda: migration_phase(lab.migration(old)) == "Unclaimed",
                     CLAIM_TIMEOUT_S + 60, 0.2)
    assert phase
    migration = lab.migration(old)
    assert migration is not None and not migration["spec"].get("targetNode")
    assert "no pod claimed it" in migration["status"]["containers"][0]["condition"]["reason"]
    wait_for("the image removed", lambda: not (lab.source.handover_root / old_id).exists(),
             10, 0.1)
    _nothing_left(lab, old_id)
    # owned by the ReplicaSet (the pod may be long gone): it goes with the Deployment
    assert [o["kind"] for o in migration["metadata"]["ownerReferences"]] == ["ReplicaSet"]
    lab.delete_deployments()
    wait_for("the Migration garbage-collected", lambda: lab.migration(old) is None, 120, 0.5)


def test_the_manager_reports_the_controller_and_the_ca(lab: MigrationLab) -> None:
    health = json.loads(lab.source.manager.get("/healthz"))
    assert health["migration"]["controller"] is True
    assert health["migration"]["ca"].startswith("Secret zeropod-system/zeropod-migration-ca")
    assert health["capabilities"]["migration_service"].startswith("serving on")
    secret = lab.cluster.api().get("/api/v1/namespaces/zeropod-system/secrets/"
                                   "zeropod-migration-ca")
    assert set(secret["data"]) == {"ca.crt", "ca.key"}


class _NoContainers:
    """The target controller's view of its node: no zeropod container (not needed here)."""

    def containers(self) -> list[Any]:
        return []


def _breaking(folder: Path, compression: str, extras: Mapping[str, Path]) -> Iterator[Any]:
    """The source's stream, ended by an error after a few chunks (the node goes away)."""
    from zeropod_migration.imagefs import ImageSender

    for number, chunk in enumerate(ImageSender(folder, compression=compression,
                                               extras=extras).chunks()):
        if number == 6:
            raise OSError("the source node went away midway")
        yield chunk


@pytest.mark.parametrize("failure", ["broken midway", "source manager down"])
def test_a_failed_transfer_fails_the_migration_and_leaves_nothing(
        lab: MigrationLab, tmp_path: Path, failure: str) -> None:
    """The target's side of a migration from another node whose image does not arrive: a
    source image service in this process (on one lab node the image is only renamed), a real
    ``Migration`` and pod in the apiserver, the target's controller as the manager runs it.
    The answer is "no image" (the container starts fresh, see tests/e2e), the ``Migration``
    says ``Failed`` with the reason, and nothing is left in the target's image root."""
    from zeropod_core.manager.kube import KubeApi, KubeSettings
    from zeropod_migration.controller import MigrationController
    from zeropod_migration.service import ImageServer
    from zeropod_migration.settings import MigrationSettings
    from zeropod_migration.tls import ClusterCA

    api, tag = lab.cluster.api(), secrets.token_hex(3)
    source_id, target_id = f"src{tag}", f"dst{tag}"
    snapshot = tmp_path / "source" / source_id / "snapshot"
    snapshot.mkdir(parents=True)
    (snapshot / "inventory.img").write_bytes(b"inventory")
    (snapshot / "pages-1.img").write_bytes(os.urandom(16 << 20))
    pod = f"target-{tag}"
    api.create("/api/v1/namespaces/default/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "labels": {"pod-template-hash": tag}},
        "spec": {"nodeSelector": {"zeropod.test/never": "true"},  # stays Pending
                 "containers": [{"name": "app", "image": "docker.io/zeropod/counter-app:v1"}]}})
    ca = ClusterCA.create()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        server = ImageServer(tmp_path / "source", ca.issue("other-node", ["127.0.0.1"]),
                             "127.0.0.1:0", chunks=_breaking)
        await server.start()
        port = server.port
        if failure == "source manager down":
            await server.stop(None)
        name = f"source-{tag}"
        api.create(MIGRATIONS, {
            "apiVersion": "runtime.zeropod.ctrox.dev/v1", "kind": "Migration",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"sourceNode": "other-node", "sourcePod": name, "podTemplateHash": tag,
                     "liveMigration": False, "restoreReady": False,
                     "containers": [{"name": "app", "id": source_id,
                                     "imageServer": {"host": "127.0.0.1", "port": port}}]}})
        current = api.get(f"{MIGRATIONS}/{name}")
        current["status"] = {"containers": [{"name": "app", "condition": {"phase": "Running"}}]}
        api.call("PUT", f"{MIGRATIONS}/{name}/status", current)
        kube = KubeApi.connect(KubeSettings(kubeconfig=str(lab.cluster.kubeconfig),
                                            node_name=lab.target.name))
        config = MigrationSettings(image_root=tmp_path / "target", image_timeout_s=30)
        controller = MigrationController(kube, _NoContainers(), config,
                                         ca.issue(lab.target.name, ["127.0.0.1"]),
                                         port=lambda: 0, ca="test")
        try:
            answer = dict(await controller.node_api({
                "container_id": target_id, "container_name": "app", "pod_name": pod,
                "pod_namespace": "default"}))
        finally:
            await server.stop(None)
        return answer, api.get(f"{MIGRATIONS}/{name}")

    try:
        answer, migration = asyncio.run(scenario())
    finally:
        api.delete(f"/api/v1/namespaces/default/pods/{pod}")
    expected = "UNAVAILABLE" if failure == "source manager down" else "went away midway"
    assert answer["image"] is False and expected in answer["reason"], answer
    assert migration["spec"]["targetPod"] == pod
    condition = migration["status"]["containers"][0]["condition"]
    assert condition["phase"] == "Failed" and expected in condition["reason"]
    leftovers = list((tmp_path / "target").rglob("*")) if (tmp_path / "target").exists() else []
    assert leftovers == [], leftovers
    # the Migration is owned by the (never started) target pod now: it goes with it
    wait_for("the Migration garbage-collected",
             lambda: lab.migration(migration["metadata"]["name"]) is None, 120, 0.5)
