"""``zeropod demo --kubernetes``: the counter app as a pod in the lab's Kubernetes 1.20.

Starts the lab cluster (etcd, kube-apiserver, controller-manager, scheduler, one kubelet on a
private containerd with the ``zeropod`` runtime handler; built by ``scripts/setup``) and a
``zeropod-manager`` for its node, creates a pod with ``runtimeClassName: zeropod`` and kubelet
probes, and shows it scale down while staying Ready, then wake on a request to the pod IP,
with the latency the client saw. Everything is removed at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .containerd import SHIM_BINARY, shim_env
from .http import http_get, wait_for_http
from .manager import LabManager

HOST_NETNS = "/proc/self/ns/net"  # pods are reached through the node's bridge


def _say(text: str) -> None:
    print(text, flush=True)


def _phase(manager: LabManager, pod: str) -> str:
    for record in json.loads(manager.get("/status"))["containers"]:
        if record["pod"] == pod:
            return str(record["phase"])
    return "unknown"


def _wait_phase(manager: LabManager, pod: str, phase: str, timeout: float = 60) -> float:
    start = time.monotonic()
    while _phase(manager, pod) != phase:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"pod {pod} did not reach {phase} in {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - start


def run_kube_demo(*, cycles: int = 3) -> int:
    """Run the Kubernetes demo; return the process exit code."""
    from .kube import KubeCluster, missing_binaries, zeropod_runtime
    from .kube.workloads import counter_container, zeropod_pod

    missing = missing_binaries()
    if missing:
        _say(f"the lab cluster needs {', '.join(missing)}: run scripts/setup first")
        return 2
    t0 = time.monotonic()
    shim = Path(sys.executable).with_name(SHIM_BINARY)
    cluster = KubeCluster.start(runtimes=[zeropod_runtime(shim)])
    manager: LabManager | None = None
    try:
        cluster.create_runtime_class("zeropod")
        _say(f"cluster      Kubernetes 1.20 with node {cluster.node.name} "
             f"({cluster.node.node_ip}) Ready in {cluster.start_seconds:.1f} s; "
             f"kubectl --kubeconfig {cluster.kubeconfig}")
        env = shim_env(cluster.node.containerd_base)
        manager = LabManager.start(Path(env["ZEROPOD_SOCKET_DIR"]), cluster.base,
                                   env={"ZEROPOD_IMAGE_ROOT": env["ZEROPOD_IMAGE_ROOT"]})
        _say(f"manager      zeropod-manager for the node on http://{manager.address}")
        t = time.monotonic()
        cluster.create_pod(zeropod_pod("counter", [counter_container(
            env=[{"name": "APP_ALLOC_MIB", "value": "32"}])]))
        pod = cluster.wait_pod_ready("counter", timeout=120)
        ip = pod["status"]["podIP"]
        _say(f"pod          default/counter, runtimeClassName zeropod, scaledown-duration 2s, "
             f"probes every 1-2 s: Ready {time.monotonic() - t:.1f} s after `create`, "
             f"IP {ip}")
        first = wait_for_http(HOST_NETNS, ip, 8080)
        _say(f"request      {first.elapsed_s * 1000:6.1f} ms  {first.body.decode()}")
        for cycle in range(1, cycles + 1):
            idle = _wait_phase(manager, "counter", "SCALED_DOWN")
            ready = cluster.wait_pod_ready("counter", timeout=5) is not None
            _say(f"scaled down  cycle {cycle}: checkpointed after {idle:.1f} s more although "
                 f"the kubelet keeps probing; pod Ready: {ready}")
            woken = http_get(HOST_NETNS, ip, 8080, timeout=30)
            _say(f"woken up     {woken.elapsed_s * 1000:6.1f} ms (connect to full response) "
                 f"from the pod IP: {woken.body.decode()}")
        out = cluster.kubectl("exec", "counter", "--", "/usr/bin/python3", "-c",
                              "print('hello from kubectl exec')").stdout.strip()
        _say(f"exec         kubectl exec: {out}")
        _say(f"done         the counter kept counting across {cycles} checkpoints "
             f"(total {time.monotonic() - t0:.1f} s)")
        return 0
    finally:
        if manager is not None:
            manager.stop()
        cluster.stop()
        _say("cleanup      cluster, manager and files removed")


if __name__ == "__main__":
    sys.exit(run_kube_demo())
