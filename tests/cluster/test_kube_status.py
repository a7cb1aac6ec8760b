"""Status labels, events and the resize fallback against the lab's real Kubernetes 1.20
(kube-apiserver with RBAC), with the manager authenticated as its own service account
``zeropod-system/zeropod-node`` under the RBAC rules of ``deploy/``.

The manager runs outside the cluster (the lab's pods cannot reach the apiserver), pointed at
the node's shim socket folder, with a kubeconfig holding the service account's token.
Kubernetes 1.20 has no in-place resize: ``pods/resize`` answers 404, the plain update that
follows is ``Invalid``, logged once per pod; labels and events work for real.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab import images
from zeropod_core.lab.containerd import shim_env
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.kube import KubeCluster
from zeropod_core.lab.kube.accounts import service_account_kubeconfig
from zeropod_core.lab.manager import LabManager

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "base"
HOST_NETNS = "/proc/self/ns/net"
LABEL = "status.zeropod.ctrox.dev/app"


def _apply(cluster: KubeCluster, *files: Path) -> None:
    for file in files:
        cluster.kubectl("apply", "-f", str(file))


@pytest.fixture(scope="module")
def manager(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[LabManager]:
    folder = tmp_path_factory.mktemp("kube-status")
    _apply(kube_cluster, DEPLOY / "namespace.yaml", DEPLOY / "rbac.yaml",
           DEPLOY / "rbac-kube-status.yaml")
    kubeconfig = service_account_kubeconfig(kube_cluster, folder)
    socket_dir = Path(shim_env(kube_cluster.node.containerd_base)["ZEROPOD_SOCKET_DIR"])
    running = LabManager.start(socket_dir, folder, env={
        "ZEROPOD_KUBECONFIG": str(kubeconfig), "NODE_NAME": kube_cluster.node.name,
        "ZEROPOD_STATUS_LABELS": "true", "ZEROPOD_STATUS_EVENTS": "true",
        "ZEROPOD_IN_PLACE_SCALING": "true"})
    try:
        yield running
    finally:
        running.stop()
        for file in (DEPLOY / "rbac-kube-status.yaml", DEPLOY / "rbac.yaml",
                     DEPLOY / "namespace.yaml"):  # the session's cluster goes on
            kube_cluster.kubectl("delete", "--wait=false", "--ignore-not-found", "-f",
                                 str(file))


def _pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name,
                         "annotations": {"zeropod.ctrox.dev/scaledown-duration": "1s"}},
            "spec": {"runtimeClassName": "zeropod", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "app", "image": images.COUNTER_APP,
                                     "imagePullPolicy": "Never",
                                     "resources": {"requests": {"cpu": "100m",
                                                                "memory": "32Mi"}}}]}}


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def test_labels_and_events_follow_a_real_pod(kube_cluster: KubeCluster,
                                             manager: LabManager) -> None:
    name = f"counter-{secrets.token_hex(3)}"
    kube_cluster.create_pod(_pod(name))
    try:
        pod = kube_cluster.wait_pod_ready(name)
        ip = pod["status"]["podIP"]
        wait_for_http(HOST_NETNS, ip, 8080)
        path = f"/api/v1/namespaces/default/pods/{name}"

        def label() -> str | None:
            labels = kube_cluster.api().get(path)["metadata"].get("labels") or {}
            return labels.get(LABEL)

        _wait("SCALED_DOWN", lambda: label() == "SCALED_DOWN")
        pod = kube_cluster.api().get(path)
        notes = pod["metadata"]["annotations"]
        assert json.loads(notes["zeropod.ctrox.dev/cpu-requests"]) == {"app": "100m"}
        # 1.20: no pods/resize, and the plain update may not change resources
        assert pod["spec"]["containers"][0]["resources"]["requests"] == {
            "cpu": "100m", "memory": "32Mi"}
        assert http_get(HOST_NETNS, ip, 8080, timeout=20).status == 200
        _wait("RUNNING", lambda: label() == "RUNNING")

        def events() -> list[tuple[str, str]]:
            items = kube_cluster.api().get(
                f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name={name}"
            )["items"]
            items.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
            return [(e["reason"], e["type"]) for e in items
                    if e.get("reportingComponent") == "zeropod.ctrox.dev/manager"]
        _wait("two events", lambda: len(events()) >= 2)
        time.sleep(0.5)  # nothing more may come
        assert events() == [("Scaled down", "Normal"), ("Running", "Normal")]  # one each
        log = manager.log_path.read_text()
        assert log.count("the API refused the in-place resize") == 1
        assert "pod updates may not change fields" in log
        assert "no pods/resize subresource" in log
        latencies = [json.loads(line)["latency_s"] for line in log.splitlines()
                     if '"pod updated"' in line]
        print(f"\nshim event -> label written on Kubernetes 1.20 (s): {latencies}")
    finally:
        kube_cluster.delete_pod(name)


def test_a_missing_rbac_rule_is_a_clear_log_line(kube_cluster: KubeCluster,
                                                 manager: LabManager) -> None:
    kube_cluster.kubectl("delete", "clusterrolebinding", "zeropod:event-creator")
    name = f"counter-{secrets.token_hex(3)}"
    kube_cluster.create_pod(_pod(name))
    try:
        kube_cluster.wait_pod_ready(name)
        refusal = 'cannot create resource \\"events\\"'  # as JSON-escaped in the log
        _wait("the refusal", lambda: refusal in manager.log_path.read_text(), timeout=30)
        line = next(line for line in manager.log_path.read_text().splitlines()
                    if refusal in line)
        assert '"level": "error"' in line and "rbac-kube-status.yaml" in line
        assert "system:serviceaccount:zeropod-system:zeropod-node" in line
    finally:
        _apply(kube_cluster, DEPLOY / "rbac-kube-status.yaml")
        kube_cluster.delete_pod(name)
