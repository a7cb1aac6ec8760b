"""Benchmark: ``ctr run -d`` to first HTTP response, and shim memory, runc.v2 vs zeropod.v2.

Runs both runtimes interleaved (one container of each in turn, so machine noise hits both
alike) against a private containerd, with the busybox httpd image in a pod namespace, and
prints medians and p95. Needs root and the stack from scripts/setup.

    .venv/bin/python benchmarks/shim_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import dataclass, field

from zeropod_core.lab import images
from zeropod_core.lab.containerd import RUNC_RUNTIME, ZEROPOD_RUNTIME, PrivateContainerd, lab_base
from zeropod_core.lab.http import wait_for_http
from zeropod_core.lab.netns import PodNetwork, parent_pid


@dataclass
class Samples:
    first_response_ms: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    pss_mib: list[float] = field(default_factory=list)


def _memory_mib(pid: int) -> tuple[float, float]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1]) / 1024
    return values["Rss:"], values["Pss:"]


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run(runs: int) -> dict[str, Samples]:
    daemon = PrivateContainerd.start(lab_base("zeropod-bench"))
    net = PodNetwork.create("zpbench")
    results = {RUNC_RUNTIME: Samples(), ZEROPOD_RUNTIME: Samples()}
    try:
        daemon.import_image(images.build(images.busybox_httpd_spec()))
        for i in range(runs + 1):  # the first round warms caches and is not counted
            for runtime, samples in results.items():
                start = time.monotonic()
                container = daemon.run(images.BUSYBOX_HTTPD, f"bench-{i}-{runtime[14:21]}",
                                       runtime=runtime, netns=net.pod_path)
                wait_for_http(net.client_path, net.pod_ip, 8080, "/index.html",
                              interval_s=0.001)
                elapsed = (time.monotonic() - start) * 1000
                time.sleep(0.3)  # let the shim settle before measuring its memory
                rss, pss = _memory_mib(parent_pid(container.task_pid()))
                container.remove()
                if i:
                    samples.first_response_ms.append(elapsed)
                    samples.rss_mib.append(rss)
                    samples.pss_mib.append(pss)
    finally:
        daemon.stop()
        net.delete()
        shutil.rmtree(daemon.base, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    results = run(args.runs)
    print(f"{'runtime':<24} {'ctr run -> HTTP (ms)':>22} {'shim RSS (MiB)':>16} "
          f"{'shim PSS (MiB)':>16}")
    print(f"{'':<24} {'median':>10} {'p95':>11} {'median':>16} {'median':>16}")
    for runtime, s in results.items():
        print(f"{runtime:<24} {statistics.median(s.first_response_ms):>10.1f} "
              f"{_p95(s.first_response_ms):>11.1f} {statistics.median(s.rss_mib):>16.1f} "
              f"{statistics.median(s.pss_mib):>16.1f}")
    runc = statistics.median(results[RUNC_RUNTIME].first_response_ms)
    zeropod = statistics.median(results[ZEROPOD_RUNTIME].first_response_ms)
    print(f"zeropod / runc start-up ratio: {zeropod / runc:.2f} (runs: {args.runs})")


if __name__ == "__main__":
    main()
