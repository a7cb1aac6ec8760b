"""Cold migration's failure cases across the lab's two nodes, with both nodes' real managers.

Issue 11's semantics: nobody claims in time -> the source's image goes and the replacement
starts fresh (``Unclaimed``); the transfer breaks midway, or the source node's manager is
down -> the replacement starts fresh and the ``Migration`` says ``Failed`` with the reason;
nothing is left behind on either node (image and hand-over folders, a transfer's staging
folder, live arrivals, CRIU processes), and the ``Migration``'s finalizer is released when
it is deleted.

To break the real source manager's stream at a known point from outside, the managers' image
services listen on ``127.0.0.1:<port>`` of their node and a lab relay
(:class:`~zeropod_core.lab.kube.cutproxy.CutProxy`) on ``<source node IP>:<port>`` (the
address the source manager advertises) passes the target's pulls through, TLS end to end,
until a test arms it to reset the next connection after a number of bytes. A successful move
through the same relay, after the source manager was restarted, shows the relay and the
restarted manager pass a whole image.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from zeropod_core.lab.kube import KubeCluster
from zeropod_core.lab.kube.cutproxy import CutProxy
from zeropod_core.lab.kube.migration import MigrationLab, migration_lab, migration_phase, wait_for

from . import test_migration_k8s as k8s
from .test_migration_k8s import (  # noqa: F401 - collected here with this module's lab
    test_an_unclaimed_migration_times_out_and_its_image_goes,
)

pytestmark = pytest.mark.cluster

CUT_BYTES = 4 << 20  # well inside the counter app's 32 MiB of memory pages
# the image services' port inside each node's own network namespace (nothing else of the lab
# listens there below the ephemeral range)
PORT = 20000 + secrets.randbelow(12000)


@pytest.fixture(scope="module")
def lab(kube_cluster_two_nodes: KubeCluster) -> Iterator[MigrationLab]:
    cluster = kube_cluster_two_nodes
    env = {"ZEROPOD_MIGRATION_LISTEN": f"127.0.0.1:{PORT}",
           "ZEROPOD_MIGRATION_CLAIM_TIMEOUT": f"{k8s.CLAIM_TIMEOUT_S}s"}
    with migration_lab(env, cluster=cluster, nodes=cluster.nodes[:2]) as running:
        assert running.two_nodes
        yield running


@pytest.fixture(scope="module", autouse=True)
def relay(lab: MigrationLab) -> Iterator[CutProxy]:
    node = lab.source.node
    with CutProxy(node.netns, (node.node_ip, PORT), ("127.0.0.1", PORT)) as proxy:
        yield proxy


def _ids(pod: dict[str, Any]) -> str:
    return str(pod["status"]["containerStatuses"][0]["containerID"]).rpartition("://")[2]


def _failed_reason(lab: MigrationLab, name: str) -> str:
    migration = lab.migration(name)
    assert migration_phase(migration) == "Failed", migration
    return str(migration["status"]["containers"][0]["condition"]["reason"])  # type: ignore[index]


def _cleaned_up(lab: MigrationLab, old: str, old_id: str, criu_before: set[int]) -> None:
    """Delete the Deployment: the target pod goes, the Migration with it once the source
    manager released its finalizer; then nothing of the move is left on either node."""
    lab.delete_deployments()
    wait_for("the Migration garbage-collected (finalizer released)",
             lambda: lab.migration(old) is None, 120, 0.5)
    k8s._nothing_left(lab, old_id)
    wait_for("no CRIU process of this test on either node",
             lambda: not ((lab.source.criu_pids() | lab.target.criu_pids()) - criu_before),
             60, 0.2)


def test_a_transfer_broken_midway_starts_fresh_and_leaves_nothing(
        lab: MigrationLab, relay: CutProxy) -> None:
    app = lab.deployment()
    pod, _ = k8s._sleeping_pod(lab, app, "cut off midway")
    old, old_id = pod["metadata"]["name"], _ids(pod)
    criu_before = lab.source.criu_pids() | lab.target.criu_pids()
    cuts = len(relay.cuts)
    relay.cut_after(CUT_BYTES)

    lab.towards_target()
    lab.cluster.kubectl("delete", "pod", old, "--wait=false")
    new = lab.wait_new_pod(app, exclude=[old])
    assert new["spec"]["nodeName"] == lab.target.name
    assert k8s._get(new["status"]["podIP"])["count"] == 1  # a fresh app
    assert relay.cuts[cuts:] == [CUT_BYTES]  # the pull did break, at that point
    reason = _failed_reason(lab, old)
    assert f"pulling image {old_id}" in reason and "failed" in reason, reason
    migration = lab.migration(old)
    assert migration is not None
    assert migration["spec"]["targetNode"] == lab.target.name
    assert migration["spec"]["targetPod"] == new["metadata"]["name"]
    # final phase: the source manager removes its handed-over image; no staging on the target
    wait_for("the handed-over image removed",
             lambda: not (lab.source.handover_root / old_id).exists(), 30, 0.1)
    assert list(lab.target.image_root.glob("*/.*.partial-*")) == []
    print(f"\nbroken midway after {CUT_BYTES} bytes: {reason}")
    _cleaned_up(lab, old, old_id, criu_before)


def test_the_source_manager_down_fails_the_migration_and_its_restart_cleans_up(
        lab: MigrationLab, relay: CutProxy) -> None:
    """The source manager made the Migration and published the image, then went down
    before the replacement was scheduled (both nodes cordoned until then): the target's pull
    finds nobody serving. Restarted, the source manager removes the handed-over image of the
    failed migration and releases the finalizer when the Migration is deleted."""
    app = lab.deployment()
    pod, _ = k8s._sleeping_pod(lab, app, "the source manager went away")
    old, old_id = pod["metadata"]["name"], _ids(pod)
    criu_before = lab.source.criu_pids() | lab.target.criu_pids()

    lab.cordon(lab.source.name)  # both cordoned: the replacement waits unscheduled
    lab.cluster.kubectl("delete", "pod", old, "--wait=false")
    wait_for("the image published", lambda: migration_phase(lab.migration(old)) == "Running",
             60, 0.1)
    lab.source.stop_manager()
    relay.stop()  # nothing listens on the advertised port, as on a node without its manager
    try:
        lab.towards_target()
        new = lab.wait_new_pod(app, exclude=[old])
        assert new["spec"]["nodeName"] == lab.target.name
        assert k8s._get(new["status"]["podIP"])["count"] == 1  # a fresh app
        reason = _failed_reason(lab, old)
        assert f"pulling image {old_id}" in reason and "UNAVAILABLE" in reason, reason
        assert lab.migration(old)["spec"]["targetPod"] == new["metadata"]["name"]  # type: ignore[index]
        # nobody on the source to remove it while its manager is down
        assert (lab.source.handover_root / old_id / "snapshot" / "inventory.img").is_file()
        print(f"\nsource manager down: {reason}")
    finally:
        lab.source.restart_manager()
        relay.start()
    wait_for("the restarted source manager removing the handed-over image",
             lambda: not (lab.source.handover_root / old_id).exists(), 30, 0.1)
    _cleaned_up(lab, old, old_id, criu_before)


def test_a_source_manager_crashed_before_the_deletion_makes_no_migration_and_its_restart_cleans_up(
        lab: MigrationLab) -> None:
    """The source manager crashed (SIGKILL) before the pod was deleted: nobody makes a
    Migration, the replacement starts fresh after the find timeout; the shim, seeing the
    crashed manager's node API socket, still handed the image over, and the restarted
    manager removes it as an orphan after the claim timeout."""
    app = lab.deployment()
    pod, _ = k8s._sleeping_pod(lab, app, "nobody watched me go")
    old, old_id = pod["metadata"]["name"], _ids(pod)
    criu_before = lab.source.criu_pids() | lab.target.criu_pids()

    lab.source.stop_manager(crash=True)
    try:
        lab.towards_target()
        lab.cluster.kubectl("delete", "pod", old, "--wait=false")
        new = lab.wait_new_pod(app, exclude=[old])
        assert new["spec"]["nodeName"] == lab.target.name
        assert k8s._get(new["status"]["podIP"])["count"] == 1  # a fresh app
        wait_for(f"{old} gone", lambda: old not in {
            p["metadata"]["name"] for p in lab.pods(app)}, 60, 0.2)
        assert lab.migration(old) is None
        assert (lab.source.handover_root / old_id / "snapshot" / "inventory.img").is_file()
    finally:
        lab.source.restart_manager()
    try:
        wait_for("the restarted source manager removing the orphaned hand-over",
                 lambda: not (lab.source.handover_root / old_id).exists(),
                 k8s.CLAIM_TIMEOUT_S + 30, 0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the source manager's log:\n{lab.source.log_tail()}") from None
    _cleaned_up(lab, old, old_id, criu_before)


def test_after_the_failures_a_move_through_the_relay_still_works(lab: MigrationLab) -> None:
    """The restarted source manager serves again, and the relay passes a whole image."""
    k8s.test_a_sleeping_deployment_pod_moves_with_its_memory_and_files(lab)
