"""A real zeropod container (containerd, the shim, CRIU) and a real ``zeropod-manager`` process
with ``--status-labels --status-events --in-place-scaling``, talking through the ``kubernetes``
client to the apiserver STAND-IN (``zeropod_core.lab.kube_standin``, playing 1.33, since the
lab's real 1.20 has no in-place resize). The container carries the CRI annotations a kubelet
would set, so its status events name the stand-in's pod.

Prints the API calls per phase change and the latency from the shim's event to the label.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer, PrivateContainerd
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.kube_standin import StandinApi
from zeropod_core.lab.manager import LabManager
from zeropod_core.lab.netns import PodNetwork
from zeropod_core.lab.pytest_plugin import LabImages

pytestmark = pytest.mark.containerd
LABEL = "status.zeropod.ctrox.dev/app"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[tuple[StandinApi, Path]]:
    api = StandinApi(version="1.33")
    with api.serve(tmp_path) as kubeconfig:
        yield api, kubeconfig


def _wait(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return result


def _line(log: Path, message: str, count: int) -> dict[str, Any] | None:
    """The ``count``-th JSON log line of the manager whose message is ``message``."""
    seen = 0
    for raw in log.read_text().splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if record.get("msg") == message:
            seen += 1
            if seen == count:
                return dict(record)
    return None


def test_a_real_container_labels_resizes_and_events_its_pod(
    lab_containerd: PrivateContainerd, lab_images: LabImages, pod_network: PodNetwork,
    run_container: Callable[..., LabContainer], standin: tuple[StandinApi, Path],
    tmp_path: Path,
) -> None:
    api, kubeconfig = standin
    api.add_pod({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"containers": [{"name": "app", "image": "counter", "resources": {
                     "requests": {"cpu": "250m", "memory": "64Mi"},
                     "limits": {"memory": "256Mi"}}}]}})
    manager = LabManager.start(lab_containerd.node_socket_dir, tmp_path, env={
        "ZEROPOD_KUBECONFIG": str(kubeconfig), "NODE_NAME": "node-a",
        "ZEROPOD_STATUS_LABELS": "true", "ZEROPOD_STATUS_EVENTS": "true",
        "ZEROPOD_IN_PLACE_SCALING": "true"})
    try:
        health = json.loads(manager.get("/healthz"))["kubernetes"]
        assert health["reachable"] is True and health["resizer"] is True, health
        run_container(lab_images.counter, runtime=ZEROPOD_RUNTIME, annotations={
            "io.kubernetes.cri.sandbox-name": "web",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "sandbox-web",
            "zeropod.ctrox.dev/scaledown-duration": "1s"})
        wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=30)

        def label() -> str:
            return str((api.pod("web", "shop")["metadata"].get("labels") or {}).get(LABEL))

        start = len(api.calls)
        _wait("SCALED_DOWN label", lambda: label() == "SCALED_DOWN")
        _wait("the resize", lambda: len(api.events) == 1)
        down_calls = api.calls[start:]
        pod = api.pod("web", "shop")
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources == {"requests": {"cpu": "1m", "memory": "1Ki"},
                             "limits": {"memory": "256Mi"}}
        assert json.loads(pod["metadata"]["annotations"]["zeropod.ctrox.dev/cpu-requests"]) \
            == {"app": "250m"}

        start = len(api.calls)
        assert http_get(pod_network.client_path, pod_network.pod_ip, 8080,
                        timeout=20).status == 200  # wake it
        _wait("RUNNING label", lambda: label() == "RUNNING")
        _wait("the event", lambda: len(api.events) == 2)
        up_calls = api.calls[start:]
        resources = api.pod("web", "shop")["spec"]["containers"][0]["resources"]
        assert resources["requests"] == {"cpu": "250m", "memory": "64Mi"}
        assert [(e["reason"], e["type"]) for e in api.events] == [
            ("Scaled down", "Normal"), ("Running", "Normal")]
        assert api.events[1]["message"].startswith("Restored container app in ")

        latencies = [_line(manager.log_path, "pod updated", n) for n in (1, 2)]
        assert all(latencies), manager.log_path.read_text()[-3000:]
        print(f"\nAPI calls for SCALED_DOWN: {len(down_calls)} {down_calls}")
        print(f"API calls for RUNNING: {len(up_calls)} {up_calls}")
        print("shim event -> label written (s): "
              + ", ".join(str(r["latency_s"]) for r in latencies if r))
        assert len(down_calls) == len(up_calls) == 4  # GET, PUT, PUT resize, POST event
    finally:
        manager.stop()
