"""One live migration of a Deployment's running counter pod through the lab cluster, timed
from the outside (shared by ``tests/cluster/test_migration_live.py`` and
``benchmarks/migration_live.py``).

The pod's replacement can only land on the target node (the other node is cordoned); the pod
is deleted; a client polls the old pod's IP until it stops answering (the app froze) and the
new pod's IP from the moment the API server knows it until the app answers there. The freeze
is the time between the last answer of the source and the first of the target, as the issue
defines it; the total time runs from the deletion to the ``Migration``'s Completed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..http import HttpError, http_get
from .migration import MigrationLab, MigrationNode, migration_phase, wait_for

HOST_NETNS = "/proc/self/ns/net"  # pods are reached over the lab's bridge
PORT = 8080
# The counter app answers one request at a time; a /crc readiness probe every second reads
# all its memory, which right after a live move means fetching every page on demand, and
# its queue then fills up (the liveness probe fails). TCP probes for both.
LIVE_PROBES = {"readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
               "livenessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 2}}


@dataclass(frozen=True)
class LiveRound:
    """What one move measured."""

    source: str
    target: str
    old_pod: str
    new_pod: str
    last_source_count: int
    first_target_count: int
    freeze_s: float  # last answer from the source -> first answer from the target
    total_s: float  # pod deletion -> Migration Completed
    migration_duration: str  # the Migration's restoredAt - pausedAt
    bytes_moved: int  # page bytes the source's proxy sent


class _SourcePoller(threading.Thread):
    """GETs the old pod in a loop and remembers the last answer (count, time)."""

    def __init__(self, ip: str) -> None:
        super().__init__(daemon=True)
        self.ip, self.last_count, self.last_at = ip, -1, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                body = http_get(HOST_NETNS, self.ip, PORT, "/", timeout=0.5).json()
            except (OSError, HttpError, ValueError):
                time.sleep(0.005)
                continue
            self.last_count, self.last_at = int(body["count"]), time.monotonic()
            time.sleep(0.005)


def _bytes_moved(node: MigrationNode) -> int:
    health = json.loads(node.manager.get("/healthz"))
    return int(((health.get("migration") or {}).get("live") or {}).get("bytes_moved", 0))


def _new_pod_ip(lab: MigrationLab, app: str, old: str) -> tuple[str, str]:
    def assigned() -> tuple[str, str] | None:
        for pod in lab.pods(app):
            meta, status = pod["metadata"], pod.get("status") or {}
            if meta["name"] != old and not meta.get("deletionTimestamp") \
                    and status.get("podIP"):
                return str(meta["name"]), str(status["podIP"])
        return None
    found: tuple[str, str] = wait_for(f"the new pod of {app} with an IP", assigned, 120, 0.02)
    return found


def _first_answer(ip: str, timeout_s: float = 120.0) -> tuple[int, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            body = http_get(HOST_NETNS, ip, PORT, "/", timeout=2).json()
            return int(body["count"]), time.monotonic()
        except (OSError, HttpError, ValueError):
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer from {ip} within {timeout_s} s") from None
            time.sleep(0.002)


def move_live(lab: MigrationLab, app: str, pod: dict[str, Any], source: MigrationNode,
              target: MigrationNode) -> LiveRound:
    """Delete ``pod`` (running on ``source``) and follow its live move to ``target``."""
    old, old_ip = str(pod["metadata"]["name"]), str(pod["status"]["podIP"])
    if source.name != target.name:
        lab.cordon(target.name, False)
        lab.cordon(source.name)
    moved_before = _bytes_moved(source)
    poller = _SourcePoller(old_ip)
    poller.start()
    wait_for("an answer from the source pod", lambda: poller.last_at, 30, 0.01)
    deleted = time.monotonic()
    try:
        lab.cluster.kubectl("delete", "pod", old, "--wait=false")
        new, new_ip = _new_pod_ip(lab, app, old)
        count, first_at = _first_answer(new_ip)
    finally:
        poller.stop.set()
        poller.join()
    migration = wait_for("the Migration Completed or Failed",
                         lambda: (m := lab.migration(old)) and migration_phase(m) in (
                             "Completed", "Failed") and m, 120, 0.05)
    total_s = time.monotonic() - deleted
    status = migration["status"]["containers"][0]
    if status["condition"]["phase"] != "Completed":
        raise AssertionError(f"the live migration of {old} failed: {status['condition']}")
    return LiveRound(source=source.name, target=target.name, old_pod=old, new_pod=new,
                     last_source_count=poller.last_count, first_target_count=count,
                     freeze_s=first_at - poller.last_at, total_s=total_s,
                     migration_duration=str(status.get("migrationDuration", "")),
                     bytes_moved=_bytes_moved(source) - moved_before)
