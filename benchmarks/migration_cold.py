"""Benchmark: Kubernetes-driven cold migration, pod deletion -> first response on the new pod.

Starts a migration-ready lab cluster (:func:`~zeropod_core.lab.kube.migration.migration_lab`:
with ``--nodes 1`` the lab's node is source and target, with ``--nodes 2`` the image travels
from the first node's manager to the second's over mutual TLS), then per round: a Deployment of
the counter app with ``--mib`` of random memory, a few requests, asleep; ``kubectl delete
pod``; the time until the replacement pod answers its first request (restored from the migrated
image, counter continued), the ``Migration``'s ``migrationDuration`` (hand-over -> image in
place on the target) and the bytes moved (0 on one node: the image is renamed, not sent).

    .venv/bin/python benchmarks/migration_cold.py [--rounds 3] [--mib 64] [--nodes 1|2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from zeropod_core.lab.http import http_get
from zeropod_core.lab.kube.migration import MigrationLab, migration_lab, wait_for

HOST_NETNS = "/proc/self/ns/net"


def _count(ip: str) -> int:
    return int(http_get(HOST_NETNS, ip, 8080, "/", timeout=60).json()["count"])


def _image_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_round(lab: MigrationLab, mib: int) -> dict[str, float]:
    app = lab.deployment(alloc_mib=mib)
    pod = lab.wait_new_pod(app)
    old, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    for _ in range(3):
        count = _count(ip)
    wait_for("asleep", lambda: lab.source.phase(old) == "SCALED_DOWN", 60, 0.05)
    old_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
    image = _image_bytes(lab.source.image_root / old_id / "snapshot")
    pulls_before = len(lab.target.manager.log_path.read_text().splitlines())
    began = time.monotonic()
    lab.towards_target()
    lab.cluster.kubectl("delete", "pod", old, "--wait=false")
    new = lab.wait_new_pod(app, exclude=[old], timeout=180)
    ready = time.monotonic() - began
    assert _count(new["status"]["podIP"]) == count + 1, "the counter did not continue"
    first = time.monotonic() - began
    migration = lab.migration(old) or {}
    status = (migration.get("status") or {}).get("containers", [{}])[0]
    duration = str(status.get("migrationDuration", "?"))
    # the pulls the target's manager made in this round
    log = lab.target.manager.log_path.read_text().splitlines()[pulls_before:]
    moved = [json.loads(line) for line in log if '"image pulled"' in line]
    lab.delete_deployments()
    seconds = float(duration[:-2]) / 1000 if duration.endswith("ms") else \
        float(duration[:-1]) if duration.endswith("s") else float("nan")
    return {"image MiB": image / 2**20, "delete -> new pod Ready s": ready,
            "delete -> first response s": first, "migrationDuration s": seconds,
            "bytes moved MiB": sum(m.get("wire_bytes", 0) for m in moved) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=64, help="the app's random memory")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                        help="1: source and target are one node; 2: two lab nodes")
    args = parser.parse_args()
    rows = []
    with migration_lab(node_count=args.nodes) as lab:
        for number in range(args.rounds):
            row = one_round(lab, args.mib)
            rows.append(row)
            print(f"round {number + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
                  flush=True)
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.2f}"
                                 for k in rows[0]))


if __name__ == "__main__":
    main()
