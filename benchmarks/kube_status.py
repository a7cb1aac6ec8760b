"""Benchmark: what a phase change costs in the Kubernetes API, and how fast the pod shows it.

A real zeropod container (private containerd, the shim, CRIU; the counter app with
``scaledown-duration: 1s`` and the CRI annotations of pod ``shop/web``) and a real
``zeropod-manager`` with ``--status-labels --status-events --in-place-scaling``, talking
through the ``kubernetes`` client to the apiserver STAND-IN (``zeropod_core.lab.kube_standin``,
playing 1.33; the lab's real 1.20 has no in-place resize). Per scale-down and wake:

* **API calls** the manager made (from the stand-in's request log);
* **event -> label**: from the shim's event time to the pod update being answered (the
  manager logs it as ``latency_s``).

Medians and maxima. Needs root and the stack from scripts/setup::

    .venv/bin/python benchmarks/kube_status.py [--cycles 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from zeropod_core.lab import images
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, PrivateContainerd, lab_base
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.kube_standin import StandinApi
from zeropod_core.lab.manager import LabManager
from zeropod_core.lab.netns import PodNetwork


def _label(api: StandinApi) -> str:
    labels = api.pod("web", "shop")["metadata"].get("labels") or {}
    return str(labels.get("status.zeropod.ctrox.dev/app"))


def _wait(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the manager did not update the pod")
        time.sleep(0.002)


def _latencies(log: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"SCALED_DOWN": [], "RUNNING": []}
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"pod updated"' in line:
            entry = json.loads(line)
            found.setdefault(entry["phase"], []).append(float(entry["latency_s"]))
    return found


def run(cycles: int) -> None:
    api = StandinApi(version="1.33")
    api.add_pod({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"containers": [{"name": "app", "image": "counter", "resources": {
                     "requests": {"cpu": "250m", "memory": "64Mi"}}}]}})
    daemon = PrivateContainerd.start(lab_base("zeropod-bench"))
    net = PodNetwork.create("zpkbench")
    with tempfile.TemporaryDirectory(prefix="zeropod-kbench-") as folder, \
            api.serve(Path(folder)) as kubeconfig:
        manager = LabManager.start(daemon.node_socket_dir, Path(folder), env={
            "ZEROPOD_KUBECONFIG": str(kubeconfig), "NODE_NAME": "bench",
            "ZEROPOD_STATUS_LABELS": "true", "ZEROPOD_STATUS_EVENTS": "true",
            "ZEROPOD_IN_PLACE_SCALING": "true"})
        try:
            daemon.import_image(images.build(images.counter_app_spec()))
            daemon.run(images.COUNTER_APP, "kbench", runtime=ZEROPOD_RUNTIME,
                       netns=net.pod_path, annotations={
                           "io.kubernetes.cri.sandbox-name": "web",
                           "io.kubernetes.cri.sandbox-namespace": "shop",
                           "io.kubernetes.cri.container-name": "app",
                           "io.kubernetes.cri.container-type": "container",
                           "io.kubernetes.cri.sandbox-id": "sandbox-kbench",
                           "zeropod.ctrox.dev/scaledown-duration": "1s"})
            wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
            calls: dict[str, list[int]] = {"SCALED_DOWN": [], "RUNNING": []}
            for _ in range(cycles):
                for phase in ("SCALED_DOWN", "RUNNING"):
                    start, events = len(api.calls), len(api.events)
                    if phase == "RUNNING":
                        http_get(net.client_path, net.pod_ip, 8080, timeout=30)


                    def shown(phase: str = phase, events: int = events) -> bool:
                        return _label(api) == phase and len(api.events) == events + 1
                    _wait(shown)
                    time.sleep(0.05)  # nothing more may follow
                    calls[phase].append(len(api.calls) - start)
            latencies = _latencies(manager.log_path)
        finally:
            manager.stop()
            daemon.stop()
            net.delete()
    print(f"{cycles} cycles, stand-in 1.33, all switches on")
    for phase in ("SCALED_DOWN", "RUNNING"):
        values = latencies[phase]
        print(f"{phase:12} API calls per change: {sorted(set(calls[phase]))}  "
              f"event -> label: median {statistics.median(values) * 1000:.1f} ms, "
              f"max {max(values) * 1000:.1f} ms (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cycles", type=int, default=10)
    run(parser.parse_args().cycles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
