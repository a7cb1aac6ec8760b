"""Smoke test: a pod with ``runtimeClassName: zeropod`` starts under the lab's kubelet.

Only that it becomes Ready and serves; scaling down and waking up under Kubernetes are the
e2e tests' subject.
"""

from __future__ import annotations

import json
import secrets

import pytest

from zeropod_core.lab.http import wait_for_http
from zeropod_core.lab.kube import KubeCluster

from .test_cluster import HOST_NETNS, httpd_pod

pytestmark = pytest.mark.cluster


def test_zeropod_pod_becomes_ready_and_serves(kube_cluster: KubeCluster) -> None:
    if not kube_cluster.node.opt_bin.joinpath("containerd-shim-zeropod-v2").exists():
        pytest.fail("the zeropod shim is not installed in the venv: run scripts/setup")
    name = f"zp-httpd-{secrets.token_hex(3)}"
    manifest = httpd_pod(name, runtime_class="zeropod")
    manifest["metadata"]["annotations"] = {"zeropod.ctrox.dev/scaledown-duration": "0"}
    kube_cluster.create_pod(manifest)
    try:
        pod = kube_cluster.wait_pod_ready(name)
        container_id = pod["status"]["containerStatuses"][0]["containerID"]
        info = json.loads(kube_cluster.node.ctr.ctr(
            "containers", "info", container_id.removeprefix("containerd://")).stdout)
        assert info["Runtime"]["Name"] == "io.containerd.zeropod.v2"
        response = wait_for_http(HOST_NETNS, pod["status"]["podIP"], 8080, "/index.html")
        assert response.body == b"hello from zeropod busybox\n"
    finally:
        kube_cluster.delete_pod(name)
