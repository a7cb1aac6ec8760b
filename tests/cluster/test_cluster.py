"""The lab's Kubernetes 1.20 cluster with runc pods: the node, pod networking through the
node's bridge, kubectl exec/logs through the apiserver and the kubelet, the Python client."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab import images
from zeropod_core.lab.http import wait_for_http
from zeropod_core.lab.kube import KubeCluster

pytestmark = pytest.mark.cluster

HOST_NETNS = "/proc/self/ns/net"  # the test's own namespace: pods are reached via the bridge


def httpd_pod(name: str, runtime_class: str | None = None) -> dict[str, Any]:
    """busybox httpd that logs a line first; Ready once it answers the kubelet's probe."""
    spec: dict[str, Any] = {
        "containers": [{
            "name": "httpd",
            "image": images.BUSYBOX_HTTPD,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c",
                        "echo started $(hostname); exec httpd -f -p 8080 -h /www"],
            "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080},
                               "periodSeconds": 1},
        }],
        "terminationGracePeriodSeconds": 1,
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def runc_pod(kube_cluster: KubeCluster) -> Iterator[dict[str, Any]]:
    name = f"httpd-{secrets.token_hex(3)}"
    kube_cluster.create_pod(httpd_pod(name))
    try:
        yield kube_cluster.wait_pod_ready(name)
    finally:
        kube_cluster.delete_pod(name)


def test_node_is_ready_with_its_bridge_address(kube_cluster: KubeCluster) -> None:
    node = kube_cluster.api().get(f"/api/v1/nodes/{kube_cluster.node.name}")
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert {"type": "InternalIP", "address": kube_cluster.node.node_ip} \
        in node["status"]["addresses"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_runc_pod_answers_on_its_ip_from_the_host(
    kube_cluster: KubeCluster, runc_pod: dict[str, Any]
) -> None:
    pod_ip = runc_pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in kube_cluster.node.network.subnet
    response = wait_for_http(HOST_NETNS, pod_ip, 8080, "/index.html")
    assert response.status == 200
    assert response.body == b"hello from zeropod busybox\n"


def test_kubectl_exec_returns_output_and_exit_code(
    kube_cluster: KubeCluster, runc_pod: dict[str, Any]
) -> None:
    name = runc_pod["metadata"]["name"]
    proc = kube_cluster.kubectl("exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                                check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "out\n"
    assert "err" in proc.stderr
    assert kube_cluster.kubectl("exec", name, "--", "hostname").stdout.strip() == name


def test_kubectl_logs_show_the_container_output(
    kube_cluster: KubeCluster, runc_pod: dict[str, Any]
) -> None:
    name = runc_pod["metadata"]["name"]
    assert kube_cluster.kubectl("logs", name).stdout == f"started {name}\n"


def test_python_client_lists_the_pod(kube_cluster: KubeCluster, runc_pod: dict[str, Any]) -> None:
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kube_cluster.kubeconfig)))
    pods = {p.metadata.name: p for p in api.list_namespaced_pod("default").items if p.metadata}
    pod = pods[runc_pod["metadata"]["name"]]
    assert pod.status and pod.spec
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip == runc_pod["status"]["podIP"]
    assert pod.spec.node_name == kube_cluster.node.name


def test_kubelet_leaves_the_host_sysctls_alone(kube_cluster: KubeCluster) -> None:
    """The kubelet would set these at start; the lab's kubelet only warns (KernelTunableWarn)."""
    wanted = {"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10",
              "kernel/panic_on_oops": "1", "kernel/keys/root_maxkeys": "1000000",
              "kernel/keys/root_maxbytes": "25000000"}
    log = kube_cluster.node.base.joinpath("kubelet.log").read_text()
    for key, value in wanted.items():
        current = Path("/proc/sys", key).read_text().strip()
        if current != value:  # the kubelet would have changed it: it must have warned instead
            assert f"Invalid kernel flag: {key}, expected value: {value}, actual value: " \
                   f"{current}" in log
