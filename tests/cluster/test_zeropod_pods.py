"""zeropod pods under the lab's real kubelet 1.20, driven through the API server and kubectl.

Every pod uses ``runtimeClassName: zeropod`` and upstream's annotations. The phases are read
from a real ``zeropod-manager`` watching the node's shims, as a user would (``/status``).
Nothing here configures the node's address: the kubelet's probes must not count as activity
out of the box.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab import images
from zeropod_core.lab.containerd import shim_env
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.kube import KubeCluster
from zeropod_core.lab.kube.workloads import counter_container, zeropod_pod
from zeropod_core.lab.manager import LabManager
from zeropod_core.lab.pty import run_in_pty

from .test_cluster import HOST_NETNS

pytestmark = pytest.mark.cluster

@pytest.fixture(scope="module")
def node_manager(kube_cluster: KubeCluster,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabManager]:
    """A zeropod-manager for the node's shims (the DaemonSet's job on a real node)."""
    env = shim_env(kube_cluster.node.containerd_base)
    manager = LabManager.start(Path(env["ZEROPOD_SOCKET_DIR"]),
                               tmp_path_factory.mktemp("node-manager"),
                               env={"ZEROPOD_IMAGE_ROOT": env["ZEROPOD_IMAGE_ROOT"]})
    try:
        yield manager
    finally:
        manager.stop()


class Pods:
    """Creates pods for a test and deletes them afterwards."""

    def __init__(self, cluster: KubeCluster, manager: LabManager) -> None:
        self.cluster, self.manager = cluster, manager
        self.names: list[str] = []

    def start(self, containers: list[dict[str, Any]], annotations: dict[str, str] | None = None,
              **kwargs: Any) -> dict[str, Any]:
        name = f"zp-{secrets.token_hex(3)}"
        self.names.append(name)
        self.cluster.create_pod(zeropod_pod(name, containers, annotations, **kwargs))
        return self.cluster.wait_pod_ready(name, timeout=90)

    def phase(self, pod: str, container: str = "app") -> str | None:
        for record in json.loads(self.manager.get("/status"))["containers"]:
            if record["pod"] == pod and record["name"] == container:
                return str(record["phase"])
        return None

    def wait_phase(self, pod: str, phase: str, container: str = "app",
                   timeout: float = 30) -> float:
        start = time.monotonic()
        while (seen := self.phase(pod, container)) != phase:
            assert time.monotonic() - start < timeout, \
                f"{pod}/{container} is {seen}, not {phase}, after {timeout} s"
            time.sleep(0.1)
        return time.monotonic() - start

    def delete_all(self) -> None:
        """Delete the test's pods (grace 0); their removal from the API is not awaited:
        kubelet 1.20 removes a deleted pod's sandbox only at its next garbage collection."""
        for name in self.names:
            self.cluster.delete_pod(name, wait=False)


@pytest.fixture
def pods(kube_cluster: KubeCluster, node_manager: LabManager) -> Iterator[Pods]:
    made = Pods(kube_cluster, node_manager)
    yield made
    made.delete_all()


def _count(pod: dict[str, Any], port: int = 8080) -> int:
    return int(http_get(HOST_NETNS, pod["status"]["podIP"], port, "/", timeout=20)
               .json()["count"])


def _ready(cluster: KubeCluster, name: str) -> bool:
    pod = cluster.api().get(f"/api/v1/namespaces/default/pods/{name}")
    return pod["status"]["phase"] == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])


def test_probes_neither_keep_it_awake_nor_wake_it(pods: Pods, kube_cluster: KubeCluster) -> None:
    """With an HTTP readiness probe every second and a TCP liveness probe every two, the pod
    scales down anyway (no node address configured), then stays Running and Ready for 10 s
    while every probe is answered without a restore; a request to its IP wakes it with its
    memory."""
    pod = pods.start([counter_container()])
    name = pod["metadata"]["name"]
    assert _count(pod) >= 1
    before = _count(pod)
    pods.wait_phase(name, "SCALED_DOWN", timeout=20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert pods.phase(name) == "SCALED_DOWN", "a kubelet probe woke the container"
        assert _ready(kube_cluster, name)
        time.sleep(0.25)
    assert _count(pod) == before + 1, "the wake lost the app's memory"


def test_kubectl_exec_wakes_it_and_returns(pods: Pods, kube_cluster: KubeCluster) -> None:
    pod = pods.start([counter_container()])
    name = pod["metadata"]["name"]
    count = _count(pod)
    for round_ in range(3):  # checkpoint -> exec wake -> checkpoint keeps working
        pods.wait_phase(name, "SCALED_DOWN", timeout=20)
        started = time.monotonic()
        proc = kube_cluster.kubectl("exec", name, "--", "/usr/bin/python3", "-c",
                                    "import sys; print('exec-ok'); sys.exit(4)",
                                    check=False, timeout=30)
        assert (proc.returncode, proc.stdout) == (4, "exec-ok\n"), proc.stderr
        assert time.monotonic() - started < 20
        count += 1
        assert _count(pod) == count, f"round {round_}: state lost"
    pods.wait_phase(name, "SCALED_DOWN", timeout=20)
    kubectl = str(kube_cluster.binaries.k8s("kubectl"))
    code, output = run_in_pty([kubectl, f"--kubeconfig={kube_cluster.kubeconfig}", "exec", "-it",
                             name, "--", "/usr/bin/python3", "-c",
                             "import sys; print('tty-ok', sys.stdout.isatty()); sys.exit(5)"])
    assert code == 5 and "tty-ok True" in output, output
    assert pods.phase(name) != "CHECKPOINT_FAILED"
    # a command that does not exist fails at once, as under runc (it hung 60 s once)
    started = time.monotonic()
    proc = kube_cluster.kubectl("exec", name, "--", "/no/such/command", check=False,
                                timeout=90)
    assert proc.returncode != 0 and "no such file" in proc.stderr.lower(), proc.stderr
    assert time.monotonic() - started < 20


def test_kubectl_logs_show_output_from_before_and_after_checkpoints(
        pods: Pods, kube_cluster: KubeCluster) -> None:
    ticker = {"name": "app", "image": images.BUSYBOX_HTTPD, "imagePullPolicy": "Never",
              "command": ["sh", "-c", "httpd -p 8080 -h /www; i=0; "
                          "while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"],
              "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}
    pod = pods.start([ticker])
    name = pod["metadata"]["name"]
    pods.wait_phase(name, "SCALED_DOWN", timeout=20)
    asleep = kube_cluster.kubectl("logs", name).stdout.count("tick ")
    wait_for_http(HOST_NETNS, pod["status"]["podIP"], 8080, "/index.html")
    deadline = time.monotonic() + 10
    while (logs := kube_cluster.kubectl("logs", name).stdout).count("tick ") < asleep + 3:
        assert time.monotonic() < deadline, "no log lines from the restored process"
        time.sleep(0.2)
    ticks = [int(line.split()[1]) for line in logs.splitlines() if line.startswith("tick ")]
    assert ticks == list(range(1, len(ticks) + 1)), "the restored shell did not continue"


def test_container_names_and_ports_map_on_a_two_container_pod(
        pods: Pods, kube_cluster: KubeCluster) -> None:
    side = {"name": "side", "image": images.BUSYBOX_HTTPD, "imagePullPolicy": "Never",
            "command": ["httpd", "-f", "-p", "8081", "-h", "/www"]}
    pod = pods.start([counter_container(), side],
                     {"zeropod.ctrox.dev/container-names": "app",
                      "zeropod.ctrox.dev/ports-map": "app=8080"})
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    pods.wait_phase(name, "SCALED_DOWN", timeout=20)
    assert pods.phase(name, "side") is None, "the unmanaged container must not scale"
    for _ in range(3):
        assert http_get(HOST_NETNS, ip, 8081, "/index.html").status == 200
    assert pods.phase(name) == "SCALED_DOWN", "traffic to the other container woke the app"
    assert _count(pod) == 1  # its port (ports-map) wakes it; probes (/crc) do not count
    assert pods.phase(name) == "RUNNING"


def test_a_probe_larger_than_the_probe_buffer_wakes_it(pods: Pods) -> None:
    big_probe = {"httpGet": {"path": "/crc", "port": 8080, "httpHeaders": [
        {"name": "X-Padding", "value": "p" * 200}]}, "periodSeconds": 1}
    pod = pods.start([counter_container(readinessProbe=big_probe)],
                     {"zeropod.ctrox.dev/probe-buffer-size": "64"})
    name = pod["metadata"]["name"]
    pods.wait_phase(name, "SCALED_DOWN", timeout=30)
    pods.wait_phase(name, "RUNNING", timeout=10)  # the next probe is not recognised: a wake


def test_deleting_a_sleeping_pod_ends_within_its_grace_period_and_leaves_nothing(
        pods: Pods, kube_cluster: KubeCluster) -> None:
    """The pod's containers (app and sandbox) end within the 3 s grace period and nothing of
    them stays on the node: images, bpffs pins, the shim and its sockets. (Removing the API
    object afterwards waits for kubelet 1.20's sandbox clean-up, up to a minute for runc pods
    too, so it is not timed here.)"""
    pod = pods.start([counter_container()], grace_s=3)
    name = pod["metadata"]["name"]
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    pods.wait_phase(name, "SCALED_DOWN", timeout=20)
    env = shim_env(kube_cluster.node.containerd_base)
    image_dir = Path(env["ZEROPOD_IMAGE_ROOT"]) / container_id
    assert (image_dir / "snapshot").exists()
    tasks_before = set(_tasks(kube_cluster))
    started = time.monotonic()
    kube_cluster.api().delete(f"/api/v1/namespaces/default/pods/{name}")
    while container_id in _tasks(kube_cluster):
        assert time.monotonic() - started < 30, "the sleeping container did not end"
        time.sleep(0.05)
    took = time.monotonic() - started
    assert took < 3 + 2, f"the container ended {took:.1f} s after the delete (grace 3 s)"
    deadline = time.monotonic() + 15
    while leftovers := _pod_leftovers(kube_cluster, container_id, tasks_before):
        assert time.monotonic() < deadline, f"left behind: {leftovers}"
        time.sleep(0.2)
    assert not image_dir.exists()


def _tasks(cluster: KubeCluster) -> list[str]:
    return cluster.node.ctr.ctr("task", "ls", "-q").stdout.split()


def _pod_leftovers(cluster: KubeCluster, container_id: str,
                   tasks_before: set[str]) -> list[str]:
    """What the node still has of a deleted pod: its tasks (the app's and its sandbox's),
    its checkpoint folder, bpffs pins and shim sockets of sandboxes without a task."""
    env = shim_env(cluster.node.containerd_base)
    live = set(_tasks(cluster))
    gone = tasks_before - live  # the pod's sandbox (and app) tasks once they ended
    left = [f"task {t}" for t in tasks_before & live if t == container_id]
    if not gone:
        left.append("the pod's sandbox task")
    image_dir = Path(env["ZEROPOD_IMAGE_ROOT"]) / container_id
    if image_dir.exists():
        left.append(str(image_dir))
    bpf = Path(env["ZEROPOD_BPF_ROOT"])
    left += [str(p) for p in (bpf.iterdir() if bpf.exists() else [])
             if p.name.startswith("sb-") and p.name[3:] in gone]
    sockets = Path(env["ZEROPOD_SOCKET_DIR"])
    left += [str(p) for p in (sockets.iterdir() if sockets.exists() else [])
             if _socket_answers(p) is False]
    return left


def _socket_answers(path: Path) -> bool:
    """Whether a shim still serves on a node API socket (a dead one leaves a stale file)."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("restart", ["kubelet", "containerd"])
def test_restarting_the_node_daemons_while_it_sleeps_loses_nothing(
        pods: Pods, kube_cluster: KubeCluster, restart: str) -> None:
    pod = pods.start([counter_container()])
    name = pod["metadata"]["name"]
    before = _count(pod)
    pods.wait_phase(name, "SCALED_DOWN", timeout=20)
    restarts: dict[str, Callable[[], None]] = {
        "kubelet": kube_cluster.node.restart_kubelet,
        "containerd": kube_cluster.node.restart_containerd}
    restarts[restart]()
    time.sleep(3)  # the kubelet re-syncs its pods
    assert pods.phase(name) == "SCALED_DOWN"
    assert _count(pod) == before + 1
    kube_cluster.wait_pod_ready(name, timeout=60)
    statuses = kube_cluster.api().get(
        f"/api/v1/namespaces/default/pods/{name}")["status"]["containerStatuses"]
    assert statuses[0]["restartCount"] == 0, "the container was restarted, its state lost"


def test_the_kubernetes_demo_runs(kube_cluster: KubeCluster) -> None:
    """``zeropod demo --kubernetes`` (a cluster of its own beside the session's)."""
    import sys
    binary = Path(sys.executable).with_name("zeropod")
    out = subprocess.run([str(binary), "demo", "--kubernetes"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("woken up") == 3 and '"count": 4' in out.stdout, out.stdout
    assert "kubectl exec: hello from kubectl exec" in out.stdout
