"""A whole Kubernetes 1.20 cluster in a temporary folder: control plane plus one or more nodes.

``KubeCluster.start()`` returns once every node is Ready and pods can be admitted (the
``default`` ServiceAccount has its token); ``stop()`` leaves the machine as it was: processes
stopped by PID, the nodes' namespaces gone (and with them every pod mount and node link), the
lab bridge and cgroups deleted, the folder removed. Pods use images imported offline
(``imagePullPolicy: Never``); the sandbox image is built from the ``pause`` that
scripts/build-k8s compiled.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import images
from ..containerd import lab_base
from .api import KubeApi
from .binaries import KubeBinaries, find_binaries
from .control_plane import ControlPlane
from .network import DEFAULT_POD_RANGE, LabNetwork, pick_subnets
from .node import KubeNode
from .pki import ClusterPki
from .procs import ClusterError, LabProcess, wait_until
from .runtimes import CriRuntime

log = logging.getLogger("zeropod.lab.kube")

PAUSE_IMAGE = "docker.io/zeropod/pause:lab"
# Waiting reasons after which a pod will not become Ready by itself.
_HOPELESS = {"ErrImageNeverPull", "CrashLoopBackOff", "CreateContainerConfigError",
             "CreateContainerError", "InvalidImageName", "RunContainerError"}


def pause_image_spec(pause: Path) -> images.ImageSpec:
    """The sandbox image: upstream's static ``pause`` and nothing else."""
    return images.ImageSpec(name=PAUSE_IMAGE, files={"pause": pause}, symlinks={},
                            cmd=["/pause"], env=[], exposed_ports=[])


def default_images() -> list[images.ImageSpec]:
    """The lab's app images, available on every node: busybox httpd and the counter app."""
    return [images.busybox_httpd_spec(), images.counter_app_spec()]


@dataclass
class KubeCluster:
    """A running lab cluster; ``kubeconfig`` is the admin's (kubectl, the Python client)."""

    base: Path
    binaries: KubeBinaries
    pki: ClusterPki
    control_plane: ControlPlane | None = None
    lab_network: LabNetwork | None = None
    nodes: list[KubeNode] = field(default_factory=list)
    start_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per start phase

    @classmethod
    def start(cls, base: Path | None = None, *, nodes: int = 1,
              runtimes: Sequence[CriRuntime] = (), node_subnet: str | None = None,
              pod_range: str = DEFAULT_POD_RANGE,
              app_images: Sequence[images.ImageSpec] | None = None,
              node_env: Mapping[str, str] | None = None, debug: bool = False,
              timeout: float = 120) -> KubeCluster:
        """Start the lab network, etcd, the apiserver, controller-manager, scheduler and
        ``nodes`` nodes; wait until every node is Ready and pods are admitted.

        :param nodes: how many nodes (``lab-<random>-0``, ``-1``, ...), each in its own
            network and mount namespace with its own containerd and kubelet.
        :param runtimes: extra CRI runtime handlers of every node's containerd (e.g.
            :func:`~zeropod_core.lab.kube.runtimes.zeropod_runtime`); RuntimeClasses can
            name them (:meth:`create_runtime_class`).
        :param node_subnet: the first node's pod /24 (default: a free one of ``pod_range``).
        :param node_env: extra environment of every node's containerd and so of its shims
            (e.g. ``ZEROPOD_CRIU_*`` settings).
        :raises FileNotFoundError: a binary is missing (the message says to run scripts/setup).
        """
        if nodes < 1:
            raise ValueError(f"a lab cluster needs at least one node, not nodes={nodes}")
        started = time.monotonic()
        binaries = find_binaries()
        base = base or lab_base("zeropod-k8s")
        cluster = cls(base=base, binaries=binaries, pki=ClusterPki(base / "pki", base.name))
        last = started

        def phase(name: str) -> None:
            nonlocal last
            now = time.monotonic()
            cluster.phases[name] = now - last
            last = now

        try:
            archives = [images.build(spec) for spec in
                        [pause_image_spec(binaries.k8s("pause")),
                         *(default_images() if app_images is None else app_images)]]
            phase("images built")
            lab, pod_subnets, pod_routes = cluster._create_networks(nodes, node_subnet,
                                                                    pod_range)
            prefix = f"lab-{secrets.token_hex(3)}"
            for index, subnet in enumerate(pod_subnets):
                name = f"{prefix}-{index}"
                cluster.nodes.append(KubeNode.boot(
                    base / "nodes" / name, name, binaries, lab=lab, subnet=subnet,
                    pod_routes=pod_routes, sandbox_image=PAUSE_IMAGE,
                    runtimes=runtimes, env=node_env, debug=debug))
            for node in cluster.nodes:
                for peer in cluster.nodes:
                    if peer is not node:
                        node.network.route_to(peer.network)
            phase("node booted")
            plane = ControlPlane.start(base / "control-plane", binaries, cluster.pki,
                                       address=lab.gateway)
            cluster.control_plane = plane
            with ThreadPoolExecutor(len(cluster.nodes)) as pool:  # while the apiserver starts
                list(pool.map(lambda n: n.import_images(archives), cluster.nodes))
            phase("images imported")
            plane.wait_ready(timeout=timeout)
            phase("apiserver ready")
            plane.start_controllers(binaries)
            kubelets_started = time.monotonic()
            for node in cluster.nodes:
                node.start_kubelet(binaries, cluster.pki, plane.server, PAUSE_IMAGE)
            for node in cluster.nodes:
                cluster.wait_node_ready(node, timeout=timeout)
                node.phases["kubelet start to Ready"] = time.monotonic() - kubelets_started
            phase("node ready")
            wait_until("the default ServiceAccount's token", cluster._default_token_exists,
                       timeout=timeout, watch=cluster.processes())
            phase("token ready")
        except BaseException:
            cluster.stop()
            raise
        cluster.start_seconds = time.monotonic() - started
        log.info("cluster ready", extra={
            "base": str(base), "seconds": cluster.start_seconds, "phases": cluster.phases,
            "node_ips": [n.node_ip for n in cluster.nodes], "gateway": lab.gateway})
        return cluster

    def _create_networks(self, nodes: int, node_subnet: str | None, pod_range: str
                         ) -> tuple[LabNetwork, list[ipaddress.IPv4Network],
                                    list[ipaddress.IPv4Network]]:
        """The lab bridge on a free /24 and a free pod /24 per node, all different, and
        what pods route via their node: the lab's range and the lab network."""
        first = [ipaddress.IPv4Network(node_subnet)] if node_subnet else []
        lab_subnet, *picked = pick_subnets(1 + nodes - len(first), pod_range, first)
        pod_subnets = first + picked
        routes = list(ipaddress.collapse_addresses(
            [ipaddress.IPv4Network(pod_range), lab_subnet, *pod_subnets]))
        self.lab_network = LabNetwork.create(lab_subnet)
        return self.lab_network, pod_subnets, routes

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def plane(self) -> ControlPlane:
        if self.control_plane is None:
            raise ClusterError("the control plane is not started")
        return self.control_plane

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (``kubectl --kubeconfig``, ``kubernetes.config``)."""
        return self.plane.admin_kubeconfig

    @property
    def node(self) -> KubeNode:
        """The first node (the only one unless started with ``nodes``)."""
        return self.nodes[0]

    def api(self) -> KubeApi:
        return self.plane.api()

    def processes(self) -> list[LabProcess]:
        procs = self.control_plane.processes() if self.control_plane else []
        return procs + [p for node in self.nodes for p in node.processes()]

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin; raise ClusterError with its stderr if ``check`` fails."""
        argv = [str(self.binaries.k8s("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def wait_node_ready(self, node: KubeNode, timeout: float = 60) -> None:
        def ready() -> bool:
            obj = self.api().get_or_none(f"/api/v1/nodes/{node.name}")
            conditions = (obj or {}).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        wait_until(f"node {node.name} Ready", ready, timeout=timeout,
                   watch=self.processes(), interval=0.2)

    def _default_token_exists(self) -> bool:
        account = self.api().get_or_none("/api/v1/namespaces/default/serviceaccounts/default")
        return bool(account and account.get("secrets"))

    def create_runtime_class(self, name: str, handler: str | None = None) -> None:
        """A ``node.k8s.io/v1`` RuntimeClass whose handler is a CRI runtime of the nodes'
        containerd (by default the runtime of the same name)."""
        self.api().create("/apis/node.k8s.io/v1/runtimeclasses", {
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name}, "handler": handler or name})

    def create_pod(self, manifest: dict[str, Any], namespace: str = "default") -> str:
        """Create a pod from ``manifest`` (a dict) and return its name."""
        self.api().create(f"/api/v1/namespaces/{namespace}/pods", manifest)
        name: str = manifest["metadata"]["name"]
        return name

    def wait_pod_ready(self, name: str, namespace: str = "default",
                       timeout: float = 60) -> dict[str, Any]:
        """Wait for the pod's Ready condition and return the pod. Fails at once, with the
        reason, when a container waits for something that will not come (no image, crash loop)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"

        def ready() -> dict[str, Any] | None:
            pod: dict[str, Any] = self.api().get(path)
            status = pod.get("status", {})
            for container in status.get("containerStatuses", []):
                waiting = container.get("state", {}).get("waiting") or {}
                if waiting.get("reason") in _HOPELESS:
                    raise ClusterError(f"pod {name}: container {container['name']} "
                                       f"{waiting['reason']}: {waiting.get('message', '')}")
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in status.get("conditions", [])):
                return pod
            return None
        return wait_until(f"pod {namespace}/{name} Ready", ready, timeout=timeout,
                          watch=self.processes(), interval=0.2)

    def delete_pod(self, name: str, namespace: str = "default", *, wait: bool = True,
                   timeout: float = 60) -> None:
        """Delete the pod (grace period 0) and, with ``wait``, until it is gone."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        self.api().delete(path + "?gracePeriodSeconds=0")
        if wait:
            wait_until(f"pod {namespace}/{name} deleted",
                       lambda: self.api().get_or_none(path) is None, timeout=timeout,
                       interval=0.2)

    def rss_kib(self) -> dict[str, int]:
        """Resident memory per daemon now (pods not included)."""
        return {proc.name: proc.rss_kib() for proc in self.processes()}

    def stop(self) -> None:
        """Stop everything and remove the folder: the kubelets, then the control plane, then
        the rest of each node, then the lab bridge.

        The control plane stops while the nodes' namespaces still exist. Stopped the other
        way round (each node whole, then the control plane), a two-node cluster's apiserver
        sometimes still held ESTABLISHED connections from a node whose namespace was gone
        (the kubelet's closing packets apparently lost with it; not traced further) and
        ignored SIGTERM until it was killed 10 s later; in this order its stop takes ~1 s.
        """
        for node in self.nodes:
            node.stop_kubelet()
        if self.control_plane is not None:
            self.control_plane.stop()
            self.control_plane = None
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()
        if self.lab_network is not None:
            self.lab_network.delete()
        shutil.rmtree(self.base, ignore_errors=True)
        log.info("cluster stopped", extra={"base": str(self.base)})
