"""Benchmark: the lab's Kubernetes cluster: start time, where it goes, memory, a pod, stop.

Each round starts a fresh :class:`~zeropod_core.lab.kube.KubeCluster` (nothing -> node Ready
and the ``default`` ServiceAccount's token), waits 10 s, reads each daemon's RSS, times a
busybox httpd pod from create to Ready, and times the stop (cleanup included).

With ``--nodes 2`` (or more) the cluster has that many nodes, each in its own network and
mount namespaces: the extra nodes' daemons are listed as ``(node 1)``..., each node's own
phases (boot, image import, kubelet start to Ready) are printed, and the pod is pinned to the
last node.

    .venv/bin/python benchmarks/kube_cluster.py [--rounds 3] [--nodes 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

from zeropod_core.lab import images
from zeropod_core.lab.kube import KubeCluster


def one_round(nodes: int) -> dict[str, float]:
    cluster = KubeCluster.start(nodes=nodes)
    row = {"start": cluster.start_seconds, **cluster.phases}
    suffix = {node.name: f" (node {i})" if i else "" for i, node in enumerate(cluster.nodes)}
    try:
        if nodes > 1:
            for i, node in enumerate(cluster.nodes):
                for phase, seconds in node.phases.items():
                    row[f"{phase} (node {i})"] = seconds
        time.sleep(10)
        rss = cluster.rss_kib()
        for name, kib in rss.items():
            daemon, _, node_name = name.partition(" of ")
            row[f"rss {daemon}{suffix.get(node_name, '')}"] = kib / 1024
        row["rss total"] = sum(rss.values()) / 1024
        began = time.monotonic()
        httpd = {"name": "httpd", "image": images.BUSYBOX_HTTPD, "imagePullPolicy": "Never",
                 "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080},
                                    "periodSeconds": 1}}
        cluster.create_pod({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench"},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": cluster.nodes[-1].name},
                     "containers": [httpd]}})
        cluster.wait_pod_ready("bench")
        row["pod create -> Ready"] = time.monotonic() - began
    finally:
        began = time.monotonic()
        cluster.stop()
        row["stop"] = time.monotonic() - began
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args()
    rows = [one_round(args.nodes) for _ in range(args.rounds)]
    print(f"{'measure':32} {'median':>9} {'min':>9} {'max':>9}   (s, or MiB for rss)")
    for key in rows[0]:
        values = [row[key] for row in rows if key in row]
        print(f"{key:32} {statistics.median(values):9.2f} {min(values):9.2f} "
              f"{max(values):9.2f}")
    print(f"rounds: {args.rounds}, nodes: {args.nodes}")


if __name__ == "__main__":
    main()
