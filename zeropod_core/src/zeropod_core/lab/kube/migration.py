"""A lab cluster set up for Kubernetes-driven migration: the CRD, RBAC, the zeropod shim
and one ``zeropod-manager --migration-controller`` per node (outside pods, as the node's
service account), and a Deployment of the counter app.

Shared by ``tests/cluster/test_migration_k8s.py`` and ``benchmarks/migration_cold.py``. The
nodes are a parameter (:class:`MigrationNode`): on the single-node lab both ends are the one
node; a two-node lab passes one of each.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import images
from ..containerd import SHIM_BINARY, shim_env
from ..manager import LabManager
from ..manifests import DEPLOY
from .accounts import service_account_kubeconfig
from .cluster import KubeCluster
from .node import KubeNode
from .node_manager import start_node_manager
from .runtimes import zeropod_runtime
from .workloads import counter_container

CRD = DEPLOY / "crds" / "migrations.runtime.zeropod.ctrox.dev.yaml"
RBAC = (DEPLOY / "base" / "namespace.yaml", DEPLOY / "base" / "rbac.yaml",
        DEPLOY / "base" / "rbac-migration.yaml")
MIGRATIONS = "/apis/runtime.zeropod.ctrox.dev/v1/namespaces/default/migrations"


@dataclass
class MigrationNode:
    """One node's side: its Kubernetes name, its manager and its checkpoint image root.

    ``launch`` starts the node's manager as it was started first (same settings, log and
    work folder), for tests that take a node's manager down and bring it back.
    """

    name: str
    manager: LabManager
    image_root: Path
    node: KubeNode
    launch: Callable[[], LabManager]

    @property
    def handover_root(self) -> Path:
        return self.image_root.with_name(self.image_root.name + "-migrating")

    def leftovers(self, *container_ids: str) -> list[Path]:
        """What a finished migration of ``container_ids`` must not leave on this node: their
        checkpoint and hand-over folders, any transfer's staging folder
        (``<image root>/<id>/.snapshot.partial-*``) and any live arrival (``.live/``). Call
        it when no other transfer runs on the node."""
        found = [root / cid for cid in container_ids
                 for root in (self.image_root, self.handover_root) if (root / cid).exists()]
        found += self.image_root.glob("*/.*.partial-*")
        live = self.image_root / ".live"
        found += live.iterdir() if live.is_dir() else []
        return found

    def criu_pids(self) -> set[int]:
        """CRIU processes running in the node's mount namespace (its shims start them)."""
        if self.node.mounts is None:
            return set()
        pids = set()
        for pid in self.node.mounts.pids_inside():
            with contextlib.suppress(OSError):
                if b"criu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.add(pid)
        return pids

    def log_tail(self, lines: int = 40) -> str:
        """The end of the node's manager log (all its runs), for a failing test's message."""
        try:
            return "\n".join(self.manager.log_path.read_text().splitlines()[-lines:])
        except OSError as exc:
            return f"(no manager log: {exc})"

    def stop_manager(self, *, crash: bool = False) -> None:
        """The node's manager goes down: SIGTERM by PID (a clean stop, as in a DaemonSet
        rollout: it removes its node API socket), or with ``crash`` SIGKILL (it leaves the
        socket behind, as a crashed manager does)."""
        if crash and self.manager.process.poll() is None:
            self.manager.process.kill()
            self.manager.process.wait()
        self.manager.stop()

    def restart_manager(self) -> None:
        """Start the node's manager again (a stopped one is not stopped twice)."""
        self.manager.stop()
        self.manager = self.launch()

    def status(self) -> list[dict[str, Any]]:
        containers: list[dict[str, Any]] = json.loads(self.manager.get("/status"))["containers"]
        return containers

    def phase(self, pod: str, container: str = "app") -> str | None:
        return next((str(c["phase"]) for c in self.status()
                     if c["pod"] == pod and c["name"] == container), None)


@dataclass
class MigrationLab:
    cluster: KubeCluster
    source: MigrationNode
    target: MigrationNode
    folder: Path
    deployments: list[str] = field(default_factory=list)

    @property
    def two_nodes(self) -> bool:
        return self.source.name != self.target.name

    def cordon(self, node: str, on: bool = True) -> None:
        self.cluster.kubectl("cordon" if on else "uncordon", node)

    def towards_target(self) -> None:
        """Before deleting the source pod: its replacement can only land on the target."""
        if self.two_nodes:
            self.cordon(self.target.name, False)
            self.cordon(self.source.name)

    def deployment(self, *, scaledown: str = "2s", alloc_mib: int = 32,
                   extra_annotations: dict[str, str] | None = None,
                   probes: dict[str, Any] | None = None) -> str:
        """A one-replica Deployment of the counter app that migrates its container; its pod
        lands on the source node (with two nodes the target is cordoned until
        :meth:`towards_target`; the template pins no node, or the replacement would have the
        same pin). ``probes`` replace the container's probes (default: ``/crc`` readiness,
        TCP liveness)."""
        if self.two_nodes:
            self.cordon(self.source.name, False)
            self.cordon(self.target.name)
        name = f"mig-{secrets.token_hex(3)}"
        annotations = {"zeropod.ctrox.dev/scaledown-duration": scaledown,
                       "zeropod.ctrox.dev/migrate": "app", **(extra_annotations or {})}
        manifest = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {
                         "metadata": {"labels": {"app": name}, "annotations": annotations},
                         "spec": {"runtimeClassName": "zeropod",
                                  "terminationGracePeriodSeconds": 3,
                                  "containers": [counter_container(env=[
                                      {"name": "APP_ALLOC_MIB", "value": str(alloc_mib)}],
                                      **(probes or {}))]}}}}
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        self.deployments.append(name)
        return name

    def pods(self, app: str) -> list[dict[str, Any]]:
        listed = self.cluster.api().get(
            f"/api/v1/namespaces/default/pods?labelSelector=app%3D{app}")
        return list(listed.get("items") or [])

    def wait_new_pod(self, app: str, exclude: Sequence[str] = (),
                     timeout: float = 120) -> dict[str, Any]:
        """The Deployment's Ready pod that is not one of ``exclude``."""
        def ready() -> dict[str, Any] | None:
            for pod in self.pods(app):
                meta, status = pod["metadata"], pod.get("status") or {}
                if meta["name"] in exclude or meta.get("deletionTimestamp"):
                    continue
                if any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in status.get("conditions") or ()):
                    return pod
            return None
        found: dict[str, Any] = wait_for(f"a ready pod of {app}", ready, timeout)
        return found

    def migration(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.cluster.api().get_or_none(f"{MIGRATIONS}/{name}")
        return found

    def exec(self, pod: str, *argv: str) -> str:
        return self.cluster.kubectl("exec", pod, "-c", "app", "--", *argv).stdout

    def delete_deployments(self) -> None:
        for name in self.deployments:
            self.cluster.kubectl("delete", "deployment", name, "--wait=false",
                                 "--ignore-not-found", check=False)
        self.deployments.clear()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0,
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return result


def migration_phase(migration: dict[str, Any] | None, container: str = "app") -> str | None:
    for status in ((migration or {}).get("status") or {}).get("containers") or ():
        if status.get("name") == container:
            return str((status.get("condition") or {}).get("phase"))
    return None


def start_manager(cluster: KubeCluster, folder: Path, kubeconfig: Path,
                  extra_env: dict[str, str] | None = None,
                  node: KubeNode | None = None) -> MigrationNode:
    """The node's manager with the migration controller, as the node's service account
    (``node``: one of the cluster's nodes, default its first), inside the node's namespaces
    (:func:`~zeropod_core.lab.kube.node_manager.start_node_manager`): its image service
    listens on the node IP, where the other node's manager pulls from."""
    on = node or cluster.node
    env = shim_env(on.containerd_base)

    def launch() -> LabManager:
        return start_node_manager(on, folder, kubeconfig=kubeconfig, env={
            "ZEROPOD_MIGRATION_CONTROLLER": "true",
            "ZEROPOD_MIGRATION_LISTEN": f"{on.node_ip}:0",
            "ZEROPOD_MIGRATION_ADVERTISE": on.node_ip,
            "ZEROPOD_HOUSEKEEPING_INTERVAL": "3600", **(extra_env or {})})
    return MigrationNode(on.name, launch(), Path(env["ZEROPOD_IMAGE_ROOT"]), on, launch)


@contextmanager
def migration_lab(manager_env: dict[str, str] | None = None, *,
                  cluster: KubeCluster | None = None,
                  nodes: Sequence[KubeNode] = (), node_count: int = 1,
                  ) -> Iterator[MigrationLab]:
    """A lab cluster ready for migrations: the CRD, the RBAC, a manager per node.

    :param cluster: a running cluster with the ``zeropod`` runtime and RuntimeClass (it is
        left running); default: a new single-node cluster, stopped at the end.
    :param nodes: the source and the target node (one node: both ends are it); default the
        cluster's first node, or its first two when this starts a cluster of ``node_count``
        nodes.
    """
    folder = Path(tempfile.mkdtemp(prefix="zeropod-miglab-"))
    own = cluster is None
    if cluster is None:
        shim = Path(sys.executable).with_name(SHIM_BINARY)
        cluster = KubeCluster.start(runtimes=[zeropod_runtime(shim)],
                                    app_images=[images.counter_app_spec()], nodes=node_count)
    pair = list(nodes) or (cluster.nodes[:2] if own else [cluster.node])
    started: list[MigrationNode] = []
    try:
        if own:
            cluster.create_runtime_class("zeropod")
        cluster.kubectl("apply", "-f", str(CRD))
        for file in RBAC:
            cluster.kubectl("apply", "-f", str(file))
        wait_for("the Migration CRD", lambda: cluster.api().get_or_none(MIGRATIONS), 30, 0.2)
        kubeconfig = service_account_kubeconfig(cluster, folder)
        for number, node in enumerate({n.name: n for n in pair}.values()):  # one per node
            started.append(start_manager(cluster, folder / f"manager-{number}", kubeconfig,
                                         manager_env, node=node))
        lab = MigrationLab(cluster, started[0], started[-1], folder)
        try:
            yield lab
        finally:
            lab.delete_deployments()
            if lab.two_nodes:
                for node in pair:
                    cluster.kubectl("uncordon", node.name, check=False)
    finally:
        for running in started:
            running.manager.stop()
        if os.environ.get("ZEROPOD_KEEP_LAB"):  # the nodes' logs, for a look afterwards
            for node in pair:
                for log in ("containerd.log", "kubelet.log"):
                    with contextlib.suppress(OSError):
                        shutil.copy(node.base / log, folder / f"{node.name}-{log}")
        if own:
            cluster.stop()
        if not os.environ.get("ZEROPOD_KEEP_LAB"):
            shutil.rmtree(folder, ignore_errors=True)
