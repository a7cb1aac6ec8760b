"""Benchmark: checkpoint, wake-up and cold start through zeropod, against plain runc restore.

For the busybox httpd and for the Python counter app holding 100 MiB, in one run:

* **checkpoint**: the duration the shim logs for each scale-down (freeze + runc checkpoint);
* **wake**: client connect -> full HTTP response of the first request to the sleeping
  container, through containerd, the eBPF redirect, the activator and the criu plugin;
* **baseline**: the same app checkpointed and restored by plain ``runc checkpoint`` /
  ``runc restore -d`` with CRIU's default options (only ``network-lock nftables``, since there
  is no iptables; no pre-freeze, no kdat cache), timed from the restore's start to the first
  full HTTP response;
* **cold start**: zeropod with ``disable-checkpointing`` on an app that needs 2 s to start:
  client connect -> full response;
* **image size** and the **shim's RSS** while running and while scaled down.

Medians and p95. Needs root and the stack from scripts/setup::

    .venv/bin/python benchmarks/scale_to_zero.py [--cycles 10] [--cold-cycles 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "criu"))
sys.path.insert(0, str(REPO / "plugins" / "criu" / "tests"))

from bench import kdat_cache  # type: ignore[import-not-found]  # noqa: E402
from zpcriu_lab import (  # type: ignore[import-not-found]  # noqa: E402
    Lab,
    Prober,
    remove_rootfs_cache,
)

from zeropod_core.lab import images  # noqa: E402
from zeropod_core.lab.containerd import (  # noqa: E402
    ZEROPOD_RUNTIME,
    PrivateContainerd,
    lab_base,
)
from zeropod_core.lab.http import http_get, wait_for_http  # noqa: E402
from zeropod_core.lab.netns import PodNetwork, parent_pid  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    image: str  # lab image name
    lab_image: str  # zpcriu_lab image key
    env: dict[str, str]
    slow_start_command: list[str] | None  # None: APP_START_DELAY


WORKLOADS = [
    Workload("busybox httpd", images.BUSYBOX_HTTPD, "busybox", {},
             ["sh", "-c", "sleep 2; exec /bin/httpd -f -p 8080 -h /www"]),
    Workload("python 100 MiB", images.COUNTER_APP, "counter", {"APP_ALLOC_MIB": "100"}, None),
]


@dataclass
class Results:
    checkpoint_s: list[float] = field(default_factory=list)
    wake_s: list[float] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)
    cold_s: list[float] = field(default_factory=list)
    image_bytes: list[int] = field(default_factory=list)
    rss_running_kib: list[int] = field(default_factory=list)
    rss_asleep_kib: list[int] = field(default_factory=list)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _scale_downs(log: Path, container_id: str) -> list[dict[str, float]]:
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"scaled down"' in line:
            entry = json.loads(line)
            if entry.get("container") == container_id:
                events.append(entry)
    return events


def zeropod_cycles(workload: Workload, cycles: int, cold_cycles: int) -> Results:
    results = Results()
    daemon = PrivateContainerd.start(lab_base("zeropod-bench"))
    net = PodNetwork.create("zpbench")
    try:
        daemon.import_image(images.build(images.busybox_httpd_spec()))
        daemon.import_image(images.build(images.counter_app_spec()))
        container = daemon.run(workload.image, "bench-wake", runtime=ZEROPOD_RUNTIME,
                               netns=net.pod_path, env=workload.env,
                               annotations={"zeropod.ctrox.dev/scaledown-duration": "1s"})
        wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
        for cycle in range(cycles + 1):  # the first cycle warms caches and is not counted
            shim = parent_pid(net.pod_pids()[0])
            running_rss = _rss_kib(shim)
            net.wait_asleep(60.0)
            time.sleep(0.2)
            asleep_rss = _rss_kib(shim)
            woken = http_get(net.client_path, net.pod_ip, 8080, timeout=30)
            if cycle:
                results.wake_s.append(woken.elapsed_s)
                results.rss_running_kib.append(running_rss)
                results.rss_asleep_kib.append(asleep_rss)
        for event in _scale_downs(daemon.base / "containerd.log", "bench-wake")[1:]:
            results.checkpoint_s.append(float(event["duration_s"]))
            results.image_bytes.append(int(event["image_bytes"]))
        container.remove()
        env = dict(workload.env)
        command: list[str] = workload.slow_start_command or []
        if not command:
            env["APP_START_DELAY"] = "2"
        cold = daemon.run(workload.image, "bench-cold", runtime=ZEROPOD_RUNTIME,
                          netns=net.pod_path, env=env, command=command,
                          annotations={"zeropod.ctrox.dev/scaledown-duration": "1s",
                                       "zeropod.ctrox.dev/disable-checkpointing": "true"})
        wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
        for _ in range(cold_cycles):
            net.wait_asleep(60.0)
            results.cold_s.append(
                http_get(net.client_path, net.pod_ip, 8080, timeout=30).elapsed_s)
        cold.remove()
    finally:
        daemon.stop()
        net.delete()
        shutil.rmtree(daemon.base, ignore_errors=True)
    return results


async def baseline_cycles(workload: Workload, cycles: int) -> list[float]:
    """Plain runc checkpoint/restore with CRIU's defaults (only the nftables lock)."""
    tmp = Path(tempfile.mkdtemp(prefix="zeropod-bench-baseline-"))
    lab = Lab.create(tmp)
    samples = []
    try:
        config = tmp / "criu-default.conf"
        config.write_text("network-lock nftables\n")
        container = await lab.start(workload.lab_image, env=[f"{k}={v}" for k, v in
                                                             workload.env.items()],
                                    annotations={"org.criu.config": str(config)})
        await container.wait_http(deadline_s=30)
        runtime = container.runtime
        for cycle in range(cycles + 1):
            image, work = tmp / f"img-{cycle}", tmp / f"work-{cycle}"
            image.mkdir()
            work.mkdir()
            with kdat_cache(False):
                dumped = await runtime.runc("checkpoint", "--image-path", str(image),
                                            "--work-path", str(work), container.id)
                if dumped.returncode:
                    raise RuntimeError(f"baseline checkpoint failed: {dumped.error}")
                await asyncio.sleep(0.05)  # the dumped init is reaped, as in real life
                pid_file = tmp / f"pid-{cycle}"
                prober = Prober(container)
                prober.start()
                stdio = runtime.new_stdio()
                try:
                    restored = await runtime.runc(
                        "restore", "--detach", "--image-path", str(image), "--work-path",
                        str(work), "--bundle", str(container.bundle), "--pid-file",
                        str(pid_file), container.id, stdio=stdio)
                finally:
                    stdio.close()
                if restored.returncode:
                    raise RuntimeError(f"baseline restore failed: {restored.error}")
                lab.restored(container, int(pid_file.read_text()))
                elapsed = await prober.wait()
            if cycle:
                samples.append(elapsed)
            shutil.rmtree(image)
            await asyncio.sleep(0.1)
    finally:
        await lab.close()
        shutil.rmtree(tmp, ignore_errors=True)
        remove_rootfs_cache()
    return samples


def _stats(values: list[float], scale: float = 1e3) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(values) * scale:8.1f} {p95 * scale:8.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--cold-cycles", type=int, default=3)
    args = parser.parse_args()
    table = []
    for workload in WORKLOADS:
        results = zeropod_cycles(workload, args.cycles, args.cold_cycles)
        results.baseline_s = asyncio.run(baseline_cycles(workload, args.cycles))
        table.append((workload, results))
    print(f"\nmedian and p95 in ms over {args.cycles} cycles ({args.cold_cycles} for the cold "
          "start); RSS in MiB")
    print(f"{'workload':<16} {'checkpoint':>17} {'wake':>17} {'baseline restore':>17} "
          f"{'cold start 2 s':>17} {'image MiB':>9} {'shim RSS run/asleep':>20}")
    for workload, r in table:
        print(f"{workload.name:<16} {_stats(r.checkpoint_s):>17} {_stats(r.wake_s):>17} "
              f"{_stats(r.baseline_s):>17} {_stats(r.cold_s):>17} "
              f"{statistics.median(r.image_bytes) / 2**20 if r.image_bytes else 0:>9.1f} "
              f"{statistics.median(r.rss_running_kib) / 1024:>9.1f} / "
              f"{statistics.median(r.rss_asleep_kib) / 1024:<8.1f}")
    for workload, r in table:
        wake, base = statistics.median(r.wake_s), statistics.median(r.baseline_s)
        cold = statistics.median(r.cold_s) if r.cold_s else float("nan")
        print(f"{workload.name}: wake / baseline = {wake / base:.2f}, "
              f"cold start / wake = {cold / wake:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
