"""Benchmark: Kubernetes-driven live migration of a running pod between the lab's two nodes.

Starts a two-node migration-ready lab cluster
(:func:`~zeropod_core.lab.kube.migration.migration_lab`), raises ``fs.pipe-max-size`` for
CRIU's page server (put back at the end), then per memory size: a Deployment of the counter
app with that much random memory and ``zeropod.ctrox.dev/live-migrate: app``, moved ``--rounds``
times back and forth by deleting its pod
(:func:`~zeropod_core.lab.kube.live_migration.move_live`). Per round it prints the freeze
(last answer from the source -> first answer from the target, polled from outside), the
total time (pod deletion -> ``Migration`` Completed, i.e. every page moved), the
``Migration``'s ``migrationDuration`` (pausedAt -> restoredAt) and the page bytes the source
sent; the counter, ``/crc`` and the file are checked after every round.

    .venv/bin/python benchmarks/migration_live.py [--rounds 3] [--mib 256 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics

from zeropod_core.config import parse_duration
from zeropod_core.lab.http import http_get
from zeropod_core.lab.kube.live_migration import HOST_NETNS, LIVE_PROBES, move_live
from zeropod_core.lab.kube.migration import MigrationLab, migration_lab
from zeropod_core.lab.pipes import pipe_max_size_for_criu

NOTE = "written before the first move"


def rounds(lab: MigrationLab, mib: int, count: int) -> list[dict[str, float]]:
    app = lab.deployment(scaledown="1h", alloc_mib=mib, probes=LIVE_PROBES,
                         extra_annotations={"zeropod.ctrox.dev/live-migrate": "app"})
    pod = lab.wait_new_pod(app, timeout=300)
    lab.exec(pod["metadata"]["name"], "/usr/bin/python3", "-c",
             f"open('/note.txt', 'w').write({NOTE!r})")
    nodes = (lab.source, lab.target)
    rows = []
    for number in range(count):
        moved = move_live(lab, app, pod, nodes[number % 2], nodes[(number + 1) % 2])
        pod = lab.wait_new_pod(app, exclude=[moved.old_pod], timeout=120)
        ip = pod["status"]["podIP"]
        crc = http_get(HOST_NETNS, ip, 8080, "/crc", timeout=120).json()
        note = lab.exec(moved.new_pod, "/usr/bin/python3", "-c",
                        "print(open('/note.txt').read(), end='')")
        checked = (moved.first_target_count == moved.last_source_count + 1
                   and crc == {"crc_ok": True, "mib": mib} and note == NOTE)
        row = {"freeze ms": moved.freeze_s * 1000, "total s": moved.total_s,
               "migrationDuration ms": parse_duration(moved.migration_duration) * 1000,
               "pages MB": moved.bytes_moved / 1e6}
        rows.append(row)
        print(f"{mib} MiB round {number + 1} {moved.source} -> {moved.target}: "
              + ", ".join(f"{k} {v:.1f}" for k, v in row.items())
              + f", counter/memory/file {'ok' if checked else 'WRONG'}", flush=True)
        if not checked:
            raise SystemExit(f"round {number + 1}: the app's state did not survive: count "
                             f"{moved.last_source_count} -> {moved.first_target_count}, "
                             f"crc {crc}, note {note!r}")
    lab.delete_deployments()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, nargs="+", default=[256, 1024],
                        help="the app's random memory, one run per size")
    args = parser.parse_args()
    summary = []
    with pipe_max_size_for_criu(), migration_lab(node_count=2) as lab:
        for mib in args.mib:
            rows = rounds(lab, mib, args.rounds)
            summary.append((mib, rows))
    print(f"\nlive migration across two lab nodes, {args.rounds} rounds, loadavg "
          f"{os.getloadavg()[0]:.1f} (median, min-max)")
    for mib, rows in summary:
        print(f"{mib:>5} MiB: " + "; ".join(
            f"{k} {statistics.median(r[k] for r in rows):.1f} "
            f"({min(r[k] for r in rows):.1f}-{max(r[k] for r in rows):.1f})" for k in rows[0]))


if __name__ == "__main__":
    main()
