"""Live migration driven by Kubernetes across the lab's two nodes, with both nodes' real
managers, kubelets, containerds and shims.

A Deployment's counter app (``APP_ALLOC_MIB`` of random memory it can verify, a counter and
a file it wrote into its own filesystem) runs with ``zeropod.ctrox.dev/live-migrate: app``;
deleting its pod makes the source manager offer the container in a ``Migration``, the
source shim holds the kubelet's Kill, the target manager claims for the replacement pod, the
source dumps without memory, the target restores at once and fetches the pages through the
mutual-TLS page-server proxies. Three rounds (A -> B -> A -> B) per memory size; after every
round the counter went on from the source's last answer, ``/crc`` checks all the memory,
the file is there, the ``Migration`` is Completed with its times, and the source node has
nothing of the old container left. A node where CRIU's page server cannot work refuses up
front, and the replacement starts fresh.

``fs.pipe-max-size`` is raised to CRIU's 4 MiB for the moves and left at the machine's
value for the refusal (root on these VMs lacks CAP_SYS_RESOURCE; the test checks that the
managers report live migration unavailable then, and skips the refusal case otherwise).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab.http import http_get
from zeropod_core.lab.kube import KubeCluster
from zeropod_core.lab.kube.live_migration import HOST_NETNS, LIVE_PROBES, move_live
from zeropod_core.lab.kube.migration import (
    MigrationLab,
    migration_lab,
    migration_phase,
    wait_for,
)
from zeropod_core.lab.pipes import pipe_max_size_for_criu

pytestmark = pytest.mark.cluster

LIVE = {"zeropod.ctrox.dev/live-migrate": "app"}
NOTE = "written on the first node"


@pytest.fixture(scope="module")
def lab(kube_cluster_two_nodes: KubeCluster) -> Iterator[MigrationLab]:
    cluster = kube_cluster_two_nodes
    with migration_lab(cluster=cluster, nodes=cluster.nodes[:2]) as running:
        yield running


@pytest.fixture
def lazy_pages() -> None:
    """Live migration needs userfaultfd (CRIU's lazy pages): skip where the kernel has none."""
    if not Path("/proc/sys/vm/unprivileged_userfaultfd").exists():
        pytest.skip("the kernel has no userfaultfd (CONFIG_USERFAULTFD): no lazy pages")


def _get(ip: str, path: str = "/") -> dict[str, object]:
    body: dict[str, object] = http_get(HOST_NETNS, ip, 8080, path, timeout=120).json()
    return body


def _note(lab: MigrationLab, pod: str) -> str:
    return lab.exec(pod, "/usr/bin/python3", "-c", "print(open('/note.txt').read(), end='')")


def _files_log(lab: MigrationLab) -> str:
    """What the shims and managers said about the files that travel (for a failure)."""
    lines = []
    for node in lab.cluster.nodes[:2]:
        with contextlib.suppress(OSError):
            lines += [f"{node.name}: {line[:400]}" for line in
                      (node.base / "containerd.log").read_text().splitlines()
                      if "upper" in line or "files of the migrated" in line
                      or "not an overlay" in line]
    return "\n".join(lines[-20:])


def _nothing_left_of(lab: MigrationLab, container_id: str) -> None:
    for node in (lab.source, lab.target):
        for root in (node.image_root, node.handover_root, node.image_root / ".live"):
            assert not (root / container_id).exists(), f"{root / container_id} left"


def _gone(lab: MigrationLab, app: str, pod: str) -> Callable[[], bool]:
    return lambda: not any(p["metadata"]["name"] == pod for p in lab.pods(app))


def _live_available(lab: MigrationLab) -> dict[str, object]:
    """The source manager's ``/healthz`` on live migration, as of now."""
    health = json.loads(lab.source.manager.get("/healthz"))
    support: dict[str, object] = health["migration"]["live"]
    return support


@pytest.mark.timeout(2400)  # 1 GiB through Python proxies, three times, on a busy VM
@pytest.mark.parametrize("mib", [256, 1024])
def test_a_running_pod_moves_live_between_the_nodes(lab: MigrationLab, mib: int,
                                                    lazy_pages: None) -> None:
    app = lab.deployment(scaledown="1h", alloc_mib=mib, extra_annotations=LIVE,
                         probes=LIVE_PROBES)
    pod = lab.wait_new_pod(app, timeout=300)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    _get(ip)
    lab.exec(name, "/usr/bin/python3", "-c", f"open('/note.txt', 'w').write({NOTE!r})")
    nodes = (lab.source, lab.target)
    with pipe_max_size_for_criu():
        assert _live_available(lab)["available"] is True
        for number in range(3):
            source, target = nodes[number % 2], nodes[(number + 1) % 2]
            old_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
            moved = move_live(lab, app, pod, source, target)
            print(f"\nlive {mib} MiB round {number + 1} {moved.source} -> {moved.target}: "
                  f"freeze {moved.freeze_s * 1000:.0f} ms, total {moved.total_s:.2f} s, "
                  f"migrationDuration {moved.migration_duration}, "
                  f"{moved.bytes_moved / 1e6:.1f} MB of pages")
            # the app went on where it stopped: its counter, its memory, its file
            assert moved.first_target_count == moved.last_source_count + 1
            pod = lab.wait_new_pod(app, exclude=[moved.old_pod], timeout=120)
            assert pod["metadata"]["name"] == moved.new_pod
            assert pod["spec"]["nodeName"] == target.name
            ip = pod["status"]["podIP"]
            assert _get(ip, "/crc") == {"crc_ok": True, "mib": mib}
            assert _note(lab, moved.new_pod) == NOTE, _files_log(lab)
            assert moved.bytes_moved > mib << 20  # every page crossed the proxies
            migration = lab.migration(moved.old_pod)
            assert migration is not None
            spec, status = migration["spec"], migration["status"]["containers"][0]
            assert spec["liveMigration"] is True
            assert (spec["sourceNode"], spec["targetNode"]) == (source.name, target.name)
            assert spec["containers"][0]["pageServer"] and spec["containers"][0]["imageServer"]
            assert status["pausedAt"] and status["restoredAt"] and status["migrationDuration"]
            # the old pod is gone with its container; nothing of it is left on its node
            wait_for(f"{moved.old_pod} gone", _gone(lab, app, moved.old_pod), 120, 0.2)
            _nothing_left_of(lab, old_id)
    lab.delete_deployments()


def test_a_node_that_cannot_do_it_refuses_up_front(lab: MigrationLab) -> None:
    """fs.pipe-max-size at the machine's value and no CAP_SYS_RESOURCE (or no
    userfaultfd): the source manager refuses before anything moves; the Migration says
    why, the replacement starts fresh."""
    support = _live_available(lab)
    if support["available"]:
        pytest.skip("live migration is possible on this machine without raising "
                    "fs.pipe-max-size (the managers have CAP_SYS_RESOURCE)")
    app = lab.deployment(scaledown="1h", extra_annotations=LIVE, probes=LIVE_PROBES)
    pod = lab.wait_new_pod(app)
    old = pod["metadata"]["name"]
    assert int(str(_get(pod["status"]["podIP"])["count"])) == 1
    _get(pod["status"]["podIP"])
    lab.towards_target()
    lab.cluster.kubectl("delete", "pod", old, "--wait=false")
    phase = wait_for("the Migration's final phase", lambda: migration_phase(
        lab.migration(old)) in ("Completed", "Failed", "Unclaimed") and migration_phase(
        lab.migration(old)), 30, 0.1)
    assert phase == "Failed"
    reason = lab.migration(old)["status"]["containers"][0]["condition"]["reason"]  # type: ignore[index]
    assert str(support["reason"]) in reason
    new = lab.wait_new_pod(app, exclude=[old])
    assert _get(new["status"]["podIP"])["count"] == 1  # a fresh app
    lab.delete_deployments()


@pytest.mark.timeout(1200)
def test_a_page_stream_broken_midway_fails_it_and_the_target_starts_fresh(
        lab: MigrationLab, lazy_pages: None) -> None:
    """The connection between the page-server proxies is cut (in the source node's network
    namespace, ``ss -K``) while the 1 GiB of pages moves: the target's copy cannot get its
    pages and is killed, the kubelet starts the container again, fresh; the ``Migration``
    says Failed with the reason; nothing of the old container is left on either node."""
    app = lab.deployment(scaledown="1h", alloc_mib=1024, extra_annotations=LIVE,
                         probes=LIVE_PROBES)
    pod = lab.wait_new_pod(app, timeout=300)
    old, old_ip = pod["metadata"]["name"], pod["status"]["podIP"]
    old_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
    _get(old_ip)
    source_node = next(n for n in lab.cluster.nodes if n.name == lab.source.name)
    with pipe_max_size_for_criu():
        lab.towards_target()
        lab.cluster.kubectl("delete", "pod", old, "--wait=false")
        migration = wait_for("the page server published", lambda: (
            m := lab.migration(old)) and m["spec"]["containers"][0].get("pageServer") and m,
            60, 0.05)
        port = migration["spec"]["containers"][0]["pageServer"]["port"]
        deadline = time.monotonic() + 60
        while True:  # until a page stream was there to cut
            cut = subprocess.run(["nsenter", f"--net={source_node.netns}", "ss", "-K",
                                  "state", "established", "sport", "=", f":{port}"],
                                 capture_output=True, text=True, check=True)
            if len(cut.stdout.strip().splitlines()) > 1:
                break
            assert time.monotonic() < deadline, "no page stream to cut within 60 s"
            time.sleep(0.05)
        phase = wait_for("the Migration's final phase", lambda: migration_phase(
            lab.migration(old)) in ("Completed", "Failed", "Unclaimed") and migration_phase(
            lab.migration(old)), 120, 0.1)
    assert phase == "Failed"
    reason = lab.migration(old)["status"]["containers"][0]["condition"]["reason"]  # type: ignore[index]
    assert "live migration" in reason and "failed" in reason, reason

    def restarted_and_ready() -> dict[str, object] | None:
        for candidate in lab.pods(app):
            statuses = (candidate.get("status") or {}).get("containerStatuses") or ()
            if candidate["metadata"]["name"] != old and statuses \
                    and statuses[0].get("restartCount", 0) >= 1 and statuses[0].get("ready"):
                return candidate
        return None
    new: dict[str, Any] = wait_for("the target container started again", restarted_and_ready,
                                   300, 0.5)
    assert _get(new["status"]["podIP"])["count"] == 1  # a fresh app
    wait_for(f"{old} gone", _gone(lab, app, old), 120, 0.2)
    _nothing_left_of(lab, old_id)
    lab.delete_deployments()


@pytest.mark.timeout(600)
def test_an_unclaimed_live_migration_stops_the_source_as_usual(lab: MigrationLab,
                                                               lazy_pages: None) -> None:
    """The Deployment is scaled to zero: the pod is deleted and no replacement claims its
    ``Migration``. The source shim holds the kubelet's Kill until the claim timeout, then
    the container is stopped as usual (the app ran until then), ``Unclaimed``."""
    app = lab.deployment(scaledown="1h", extra_annotations=LIVE, probes=LIVE_PROBES)
    pod = lab.wait_new_pod(app)
    old, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    old_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
    _get(ip)
    with pipe_max_size_for_criu():
        lab.cluster.kubectl("scale", "deployment", app, "--replicas=0")
        wait_for("the Migration", lambda: lab.migration(old), 30, 0.1)
        # held: the app still answers while the source waits for a claim
        assert int(str(_get(ip)["count"])) == 2
        phase = wait_for("the Migration's final phase", lambda: migration_phase(
            lab.migration(old)) in ("Completed", "Failed", "Unclaimed") and migration_phase(
            lab.migration(old)), 120, 0.2)
    assert phase == "Unclaimed"
    reason = lab.migration(old)["status"]["containers"][0]["condition"]["reason"]  # type: ignore[index]
    assert "no pod claimed it" in reason
    wait_for(f"{old} gone", _gone(lab, app, old), 120, 0.2)
    _nothing_left_of(lab, old_id)
    lab.delete_deployments()


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "crashed"])
def test_a_source_manager_that_is_down_means_a_plain_stop_and_a_fresh_start(
        lab: MigrationLab, crash: bool) -> None:
    """No manager on the source node when the pod is deleted (stopped: its node API socket
    is gone; crashed: the socket is left behind and refuses): the shim does not hold the
    Kill, nobody makes a ``Migration``, and the replacement on the other node starts fresh."""
    app = lab.deployment(scaledown="1h", extra_annotations=LIVE, probes=LIVE_PROBES)
    pod = lab.wait_new_pod(app)
    old, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    old_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
    _get(ip)
    lab.source.stop_manager(crash=crash)
    try:
        with pipe_max_size_for_criu():
            lab.towards_target()
            lab.cluster.kubectl("delete", "pod", old, "--wait=false")
            new = lab.wait_new_pod(app, exclude=[old])
            assert _get(new["status"]["podIP"])["count"] == 1  # a fresh app
            wait_for(f"{old} gone", _gone(lab, app, old), 120, 0.2)
            assert lab.migration(old) is None
    finally:
        lab.source.restart_manager()
    _nothing_left_of(lab, old_id)
    lab.delete_deployments()
