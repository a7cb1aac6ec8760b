"""``zeropod demo``: the embedded default, end to end on one machine, with timings.

Starts a private containerd and a ``zeropod-manager``, imports the lab images, makes a
pod/client namespace pair and runs the counter app under ``io.containerd.zeropod.v2`` with a
short scale-down duration. It then shows the app serving, scaling to zero (its process is gone,
a checkpoint image is on disk), and waking up on the next request with its in-memory counter
intact, with the latency the client saw and the manager's ``/metrics`` lines that changed.
Everything it started is removed at the end (``--keep`` leaves it running).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from . import images
from .containerd import ZEROPOD_RUNTIME, PrivateContainerd, lab_base
from .http import http_get, wait_for_http
from .manager import LabManager
from .netns import PodNetwork

SCALEDOWN = "2s"


def _say(text: str) -> None:
    print(text, flush=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


_SHOWN = ("zeropod_checkpoint_duration_seconds_count", "zeropod_checkpoint_duration_seconds_sum",
          "zeropod_restore_duration_seconds_count", "zeropod_restore_duration_seconds_sum",
          "zeropod_running", "zeropod_checkpoint_errors_total")


def _metric_lines(manager: LabManager) -> dict[str, str]:
    lines = {}
    for line in manager.get("/metrics").decode().splitlines():
        if line.startswith(_SHOWN):
            name, _, value = line.rpartition(" ")
            lines[name] = value
    return lines


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{name} {after[name]}" for name in sorted(after) if before.get(name) != after[name]]


def run_demo(*, keep: bool = False, cycles: int = 3) -> int:
    """Run the demo; return the process exit code."""
    t0 = time.monotonic()
    daemon = PrivateContainerd.start(lab_base("zeropod-demo"))
    net: PodNetwork | None = None
    manager: LabManager | None = None
    try:
        _say(f"containerd   private daemon in {daemon.base} ({time.monotonic() - t0:.2f} s)")
        manager = LabManager.start(daemon.node_socket_dir, daemon.base)
        _say(f"manager      zeropod-manager on http://{manager.address} (/metrics /status)")
        t = time.monotonic()
        daemon.import_image(images.build(images.counter_app_spec()))
        _say(f"image        {images.COUNTER_APP} built offline and imported "
             f"({time.monotonic() - t:.2f} s)")
        net = PodNetwork.create("zpdemo")
        _say(f"network      pod {net.pod} ({net.pod_ip}) <-veth-> client {net.client}")
        t = time.monotonic()
        container = daemon.run(images.COUNTER_APP, "demo-app", runtime=ZEROPOD_RUNTIME,
                               netns=net.pod_path, env={"APP_ALLOC_MIB": "32"},
                               annotations={"zeropod.ctrox.dev/scaledown-duration": SCALEDOWN,
                                            # what the CRI would add in Kubernetes
                                            "io.kubernetes.cri.sandbox-name": "demo",
                                            "io.kubernetes.cri.sandbox-namespace": "default",
                                            "io.kubernetes.cri.container-name": "counter"})
        first = wait_for_http(net.client_path, net.pod_ip, 8080)
        _say(f"run          {ZEROPOD_RUNTIME}, scaledown-duration {SCALEDOWN}: first response "
             f"{(time.monotonic() - t) * 1000:.0f} ms after `ctr run -d`: {first.body.decode()}")
        second = http_get(net.client_path, net.pod_ip, 8080)
        _say(f"request      {second.elapsed_s * 1000:6.1f} ms  {second.body.decode()}")
        image_dir = daemon.image_root / container.id / "snapshot"
        metrics = _metric_lines(manager)
        for cycle in range(1, cycles + 1):
            idle = net.wait_asleep(timeout=30)
            _say(f"scaled down  cycle {cycle}: no process left in the pod after {idle:.1f} s "
                 f"more; containerd says {container.status()}, pid {container.task_pid()}; "
                 f"checkpoint image {_size(image_dir) / 2**20:.1f} MiB")
            woken = http_get(net.client_path, net.pod_ip, 8080, timeout=30)
            _say(f"woken up     {woken.elapsed_s * 1000:6.1f} ms (connect to full response): "
                 f"{woken.body.decode()}")
            now = _metric_lines(manager)
            for line in _changed(metrics, now):
                _say(f"  /metrics   {line}")
            metrics = now
        from ..status import render_table

        status = json.loads(manager.get("/status"))["containers"]
        _say("zeropod status\n" + render_table(status, time.time()))
        _say(f"done         the counter kept counting across {cycles} checkpoints "
             f"(total {time.monotonic() - t0:.1f} s)")
        if keep:
            _say(f"--keep: ctr --address {daemon.address} -n {daemon.namespace} task ls")
        return 0
    finally:
        if not keep:
            if manager is not None:
                manager.stop()
            daemon.stop()
            shutil.rmtree(daemon.base, ignore_errors=True)
            if net is not None:
                net.delete()
            _say("cleanup      manager and containerd stopped, namespaces and files removed")


if __name__ == "__main__":
    sys.exit(run_demo())
