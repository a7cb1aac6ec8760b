"""Two lab nodes, each in its own network and mount namespaces, in one cluster: both Ready,
zeropod pods pinned to each, pods reaching each other across the nodes, a zeropod pod on one
node woken by a pod on the other, and a zeropod-manager per node inside that node's namespaces
(what issue 11's migration flow needs: a source and a target node)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from zeropod_core.lab.http import http_get
from zeropod_core.lab.kube import KubeCluster, KubeNode, start_node_manager
from zeropod_core.lab.kube.workloads import counter_container, zeropod_pod
from zeropod_core.lab.manager import LabManager

from .test_cluster import HOST_NETNS

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(kube_cluster_two_nodes: KubeCluster) -> KubeCluster:
    if not kube_cluster_two_nodes.node.opt_bin.joinpath("containerd-shim-zeropod-v2").exists():
        pytest.fail("the zeropod shim is not installed in the venv: run scripts/setup")
    return kube_cluster_two_nodes


@pytest.fixture(scope="module")
def managers(cluster: KubeCluster,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LabManager]]:
    """One manager per node, in that node's namespaces."""
    started: list[LabManager] = []
    try:
        for node in cluster.nodes:
            started.append(start_node_manager(node, tmp_path_factory.mktemp(node.name)))
        yield started
    finally:
        for manager in started:
            manager.stop()


@pytest.fixture(scope="module")
def pods(cluster: KubeCluster) -> Iterator[list[dict[str, Any]]]:
    """A zeropod counter app pinned to each node (nodeSelector on kubernetes.io/hostname)."""
    names = []
    try:
        for node in cluster.nodes:
            name = f"zp2-{secrets.token_hex(3)}"
            manifest = zeropod_pod(name, [counter_container()])
            manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node.name}
            cluster.create_pod(manifest)
            names.append(name)
        yield [cluster.wait_pod_ready(name, timeout=90) for name in names]
    finally:
        for name in names:
            cluster.delete_pod(name, wait=False)


def _netns_id(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _ip(pod: dict[str, Any]) -> str:
    return str(pod["status"]["podIP"])


def _get_from_pod(cluster: KubeCluster, pod: dict[str, Any], ip: str, path: str) -> Any:
    """GET ``http://ip:8080/path`` from inside ``pod`` (kubectl exec python3 there)."""
    code = ("import urllib.request; print(urllib.request.urlopen("
            f"'http://{ip}:8080{path}', timeout=30).read().decode())")
    out = cluster.kubectl("exec", pod["metadata"]["name"], "--", "/usr/bin/python3", "-c",
                          code, timeout=90).stdout
    return json.loads(out)


def _record(manager: LabManager, pod: str) -> dict[str, Any] | None:
    """The manager's record of ``pod``'s app container (phase, since, ...)."""
    for record in json.loads(manager.get("/status"))["containers"]:
        if record["pod"] == pod and record["name"] == "app":
            return dict(record)
    return None


def _wait_phase(manager: LabManager, pod: str, phase: str,
                timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (record := _record(manager, pod)) is None or record["phase"] != phase:
        seen = record and record["phase"]
        assert time.monotonic() < deadline, f"{pod} is {seen}, not {phase}, after {timeout} s"
        time.sleep(0.1)
    return record


def test_both_nodes_are_ready_each_in_its_own_namespaces(cluster: KubeCluster) -> None:
    assert len(cluster.nodes) == 2
    listed = {n["metadata"]["name"]: n for n in cluster.api().get("/api/v1/nodes")["items"]}
    assert set(listed) == {node.name for node in cluster.nodes}
    host_netns = _netns_id(os.getpid())
    seen = set()
    for node in cluster.nodes:
        status = listed[node.name]["status"]
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
        assert {"type": "InternalIP", "address": node.node_ip} in status["addresses"]
        assert node.kubelet is not None and node.containerd is not None
        netns = _netns_id(node.kubelet.pid)
        assert netns == _netns_id(node.containerd.pid) != host_netns
        assert os.readlink(f"/proc/{node.kubelet.pid}/ns/mnt") != \
            os.readlink(f"/proc/{os.getpid()}/ns/mnt")
        seen.add(netns)
    assert len(seen) == 2, "the nodes share a network namespace"
    subnets = [node.network.subnet for node in cluster.nodes]
    assert not subnets[0].overlaps(subnets[1])


def test_pods_run_on_their_node_and_the_host_reaches_both(
        cluster: KubeCluster, pods: list[dict[str, Any]]) -> None:
    for node, pod in zip(cluster.nodes, pods, strict=True):
        assert pod["spec"]["nodeName"] == node.name
        assert _ip(pod) in {str(a) for a in node.network.subnet.hosts()}
        assert http_get(HOST_NETNS, _ip(pod), 8080, "/crc", timeout=30).json()["crc_ok"]


def test_pods_reach_each_other_across_the_nodes(
        cluster: KubeCluster, pods: list[dict[str, Any]]) -> None:
    a, b = pods
    assert _get_from_pod(cluster, a, _ip(b), "/crc")["crc_ok"]
    assert _get_from_pod(cluster, b, _ip(a), "/crc")["crc_ok"]


def test_a_zeropod_pod_on_b_sleeps_and_a_pod_on_a_wakes_it(
        cluster: KubeCluster, pods: list[dict[str, Any]], managers: list[LabManager]) -> None:
    """Node B's kubelet probes do not keep its pod awake (node B's own addresses are not
    activity), and a request from a pod on node A wakes it with its memory."""
    a, b = pods
    name_b = b["metadata"]["name"]
    before = http_get(HOST_NETNS, _ip(b), 8080, "/", timeout=30).json()["count"]
    asleep = _wait_phase(managers[1], name_b, "SCALED_DOWN")
    assert _get_from_pod(cluster, a, _ip(b), "/")["count"] == before + 1
    after = _record(managers[1], name_b)
    # it woke (and may be asleep again by now: a phase change since it went to sleep)
    assert after is not None and after["since"] > asleep["since"]


def test_each_node_has_a_healthy_manager_the_other_node_reaches(
        cluster: KubeCluster, pods: list[dict[str, Any]], managers: list[LabManager]) -> None:
    nodes: list[KubeNode] = cluster.nodes
    for node, manager, pod in zip(nodes, managers, pods, strict=True):
        assert manager.address.startswith(f"{node.node_ip}:")
        assert node.mounts is not None
        assert _netns_id(manager.process.pid) == _netns_id(node.mounts.holder.pid)
        assert json.loads(manager.get("/healthz"))["ok"] is True
        watched = {r["pod"] for r in json.loads(manager.get("/status"))["containers"]}
        assert pod["metadata"]["name"] in watched
        assert not watched & {p["metadata"]["name"] for p in pods if p is not pod}
    for here, there in ((nodes[0], managers[1]), (nodes[1], managers[0])):
        host, port = there.address.rsplit(":", 1)
        reply = http_get(here.netns, host, int(port), "/healthz", timeout=10)
        assert reply.status == 200
