"""One Kubernetes node of the lab: its namespaces, network, cgroup root, containerd, kubelet.

Everything a node owns is its own, so a second node (or a second cluster) can run beside it:
the folder ``<cluster>/nodes/<name>/``, a network namespace and a mount namespace (held by one
process, see :mod:`.mountns`) wired to the cluster's lab bridge (see :mod:`.network`), the
node IP on ``eth0`` in there, a CNI bridge ``zpk-<random>`` with a free pod /24, the cgroup root
``/zpk-<random>`` in every hierarchy (the kubelet's ``cgroupRoot``: pods go below it), and
containerd/kubelet sockets. containerd, the kubelet, the shims and runc they start (and a
node's manager, :mod:`.node_manager`) run in both namespaces, like a kind node's processes in
its container: the kubelet listens on the node IP, port 10250, its healthz and containerd's
stream server on the namespace's own 127.0.0.1.

The kubelet runs with ``KUBELET_KERNEL_TUNABLES=warn`` (a patch of scripts/build-k8s) so it
never changes the host's ``vm.overcommit_memory``, ``kernel.panic`` or ``kernel.panic_on_oops``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..containerd import PrivateContainerd, remove_cgroup_tree, shim_env
from .binaries import CNI_BIN_DIR, KubeBinaries
from .mountns import PrivateMounts
from .network import LabNetwork, NodeNetwork
from .pki import ClusterPki, write_kubeconfig
from .procs import LabProcess, wait_until
from .runtimes import CriRuntime, containerd_config

log = logging.getLogger("zeropod.lab.kube")

CRI_NAMESPACE = "k8s.io"
KUBELET_PORT = 10250  # each node has its own network namespace: upstream's ports are free
KUBELET_HEALTHZ_PORT = 10248
CGROUP_FS = Path("/sys/fs/cgroup")


def create_cgroup_root(name: str) -> None:
    """``/<name>`` in every cgroup hierarchy (the kubelet requires its cgroupRoot to exist).

    A new v1 cpuset starts with no CPUs and no memory nodes; it gets its parent's.
    """
    for hierarchy in CGROUP_FS.iterdir():
        if not (hierarchy / "cgroup.procs").exists():
            continue
        directory = hierarchy / name
        directory.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            path = directory / knob
            if path.exists() and not path.read_text().strip():
                path.write_text((hierarchy / knob).read_text())


def cgroup_pids(name: str) -> list[int]:
    """PIDs of every process in ``/<name>`` or below (from the v1 ``pids`` hierarchy, or the
    unified one)."""
    for hierarchy in (CGROUP_FS / "pids", CGROUP_FS / "unified", CGROUP_FS):
        root = hierarchy / name
        if root.is_dir():
            pids: list[int] = []
            for procs in root.glob("**/cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids += [int(p) for p in procs.read_text().split()]
            return pids
    return []


@dataclass
class KubeNode:
    """A node. :meth:`boot` starts its containerd; :meth:`start_kubelet` joins it to a
    cluster; :meth:`stop` removes every trace of it."""

    name: str
    base: Path
    network: NodeNetwork
    cgroup_root: str
    mounts: PrivateMounts | None = None
    containerd: LabProcess | None = None
    kubelet: LabProcess | None = None
    kubelet_port: int = 0
    runtimes: tuple[CriRuntime, ...] = ()
    phases: dict[str, float] = field(default_factory=dict)  # seconds per start phase
    ctr: PrivateContainerd = field(init=False)

    def __post_init__(self) -> None:
        # A handle for `ctr` commands against this node's containerd (not a second daemon).
        self.ctr = PrivateContainerd(base=self.containerd_base, namespace=CRI_NAMESPACE)

    @property
    def containerd_base(self) -> Path:
        return self.base / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.ctr.address

    @property
    def opt_bin(self) -> Path:
        """containerd's opt ``bin/`` folder: first on its PATH, where shims are looked up."""
        return self.ctr.opt_bin

    @property
    def node_ip(self) -> str:
        return self.network.node_ip

    @property
    def netns(self) -> str:
        """The node's network namespace (a ``/proc/<pid>/ns/net`` path, e.g. for
        :func:`zeropod_core.lab.http.http_get` from the node)."""
        return self.network.netns

    @classmethod
    def boot(cls, base: Path, name: str, binaries: KubeBinaries, *, lab: LabNetwork,
             subnet: ipaddress.IPv4Network, pod_routes: Sequence[ipaddress.IPv4Network],
             sandbox_image: str, runtimes: Sequence[CriRuntime] = (),
             env: Mapping[str, str] | None = None, debug: bool = False) -> KubeNode:
        """Create the node's namespaces, wire them to ``lab`` with the pod /24 ``subnet``,
        create its cgroup root and start its containerd.

        :param env: extra environment of containerd, which its shims inherit (e.g.
            ``ZEROPOD_CRIU_*`` settings of the zeropod shim's plugins).
        """
        started = time.monotonic()
        base.mkdir(parents=True, exist_ok=True)
        mounts = PrivateMounts.create(base / "mounts", network=True)
        try:
            network = NodeNetwork.create(lab, subnet, mounts.holder.pid, pod_routes)
        except BaseException:
            mounts.stop()
            raise
        node = cls(name=name, base=base, network=network, mounts=mounts,
                   cgroup_root=f"zpk-{secrets.token_hex(4)}", runtimes=tuple(runtimes))
        try:
            create_cgroup_root(node.cgroup_root)
            node._start_containerd(binaries, sandbox_image, env or {}, debug)
        except BaseException:
            node.stop()
            raise
        node.phases["booted"] = time.monotonic() - started
        return node

    def _start_containerd(self, binaries: KubeBinaries, sandbox_image: str,
                          env: Mapping[str, str], debug: bool) -> None:
        assert self.mounts is not None
        cd = self.containerd_base
        for sub in ("root", "state", "opt/bin", "runc"):
            (cd / sub).mkdir(parents=True, exist_ok=True)
        for runtime in self.runtimes:
            if runtime.binary is not None:
                (self.opt_bin / runtime.binary.name).symlink_to(runtime.binary)
        cni_conf = self.base / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-zeropod-lab.conflist").write_text(
            json.dumps(self.network.cni_config(self.base / "cni" / "ipam"), indent=2))
        (cd / "config.toml").write_text(containerd_config(
            cd, sandbox_image=sandbox_image, cni_conf_dir=cni_conf, cni_bin_dir=CNI_BIN_DIR,
            runtimes=self.runtimes, debug=debug))
        self.containerd = LabProcess.spawn(
            f"containerd of {self.name}",
            [*self.mounts.enter(), str(binaries.containerd), "--config", str(cd / "config.toml")],
            self.base / "containerd.log", env={**shim_env(cd), **env})
        wait_until(f"containerd of {self.name}",
                   lambda: self.containerd_socket.exists()
                   and self.ctr.ctr("version", check=False).returncode == 0,
                   timeout=20, watch=[self.containerd], interval=0.02)

    def import_images(self, archives: Sequence[Path]) -> None:
        """``ctr -n k8s.io images import`` each archive (pods then use imagePullPolicy Never)."""
        started = time.monotonic()
        for archive in archives:
            self.ctr.import_image(archive)
        self.phases["images imported"] = time.monotonic() - started

    def start_kubelet(self, binaries: KubeBinaries, pki: ClusterPki, server: str,
                      sandbox_image: str, *, verbosity: int = 2) -> None:
        """Give the node its credentials and start the kubelet against ``server``.

        At ``verbosity`` 2 the kubelet logs each kernel tunable it leaves alone.
        """
        assert self.mounts is not None
        client = pki.issue(f"kubelet-{self.name}", f"system:node:{self.name}",
                           groups=("system:nodes",))
        serving = pki.issue(f"kubelet-{self.name}-serving", self.name, dns=(self.name,),
                            ips=(self.node_ip,), server=True)
        kubeconfig = write_kubeconfig(self.base / "kubelet.kubeconfig", server=server,
                                      ca=pki.ca.cert, client=client,
                                      user=f"system:node:{self.name}")
        self.kubelet_port = KUBELET_PORT
        config = {
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            # kubectl exec/logs/port-forward: apiserver -> kubelet, x509 + webhook authz
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki.ca.cert)}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            # offline images cannot be pulled again: never garbage-collect them
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "clusterDomain": "cluster.local",
            "volumePluginDir": str(self.base / "volume-plugins"),
            "nodeStatusUpdateFrequency": "1s",
            "serializeImagePulls": False,
            "rotateCertificates": False,
        }
        (self.base / "kubelet.json").write_text(json.dumps(config, indent=2))
        self.kubelet = LabProcess.spawn(
            f"kubelet of {self.name}",
            [*self.mounts.enter(), str(binaries.k8s("kubelet")),
             f"--config={self.base / 'kubelet.json'}", f"--kubeconfig={kubeconfig}",
             "--container-runtime=remote",
             f"--container-runtime-endpoint=unix://{self.containerd_socket}",
             f"--node-ip={self.node_ip}", f"--hostname-override={self.name}",
             f"--root-dir={self.base / 'kubelet'}", f"--cert-dir={self.base / 'kubelet-pki'}",
             f"--pod-infra-container-image={sandbox_image}", f"--v={verbosity}"],
            self.base / "kubelet.log", env={"KUBELET_KERNEL_TUNABLES": "warn"})

    def processes(self) -> list[LabProcess]:
        return [p for p in (self.containerd, self.kubelet) if p is not None]

    def restart_containerd(self) -> None:
        """Restart the node's containerd (its shims and containers keep running)."""
        assert self.containerd is not None
        self.containerd.restart()
        wait_until(f"containerd of {self.name} after a restart",
                   lambda: self.ctr.ctr("version", check=False).returncode == 0,
                   timeout=20, watch=[self.containerd], interval=0.05)

    def restart_kubelet(self) -> None:
        """Restart the node's kubelet (it finds its pods again through CRI)."""
        assert self.kubelet is not None
        self.kubelet.restart()

    def rss_kib(self) -> int:
        """Resident memory of the node's own daemons (containerd, kubelet), not of pods."""
        return sum(p.rss_kib() for p in self.processes())

    def stop_kubelet(self) -> None:
        """Stop the kubelet (by PID); a no-op when it is not running."""
        if self.kubelet is not None:
            try:
                self.kubelet.stop()
            except Exception:
                log.exception("stopping the kubelet failed", extra={"node": self.name})

    def stop(self) -> None:
        """Stop the kubelet, kill every container, stop containerd, end the namespaces (the
        node's links go with its network namespace), then remove the cgroup root and the
        host's end of the node's veth. Each step runs even if one before failed."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("kubelet", self.stop_kubelet),
            ("containers", self._kill_containers),
            ("containerd", lambda: self.containerd.stop() if self.containerd else None),
            ("namespaces", lambda: self.mounts.stop() if self.mounts else None),
            ("cgroups", self._remove_cgroups),
            ("network", self.network.delete)]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("stopping the node failed", extra={"node": self.name,
                                                                  "step": what})

    def _kill_containers(self) -> None:
        if self.containerd is None or self.containerd.process.poll() is not None:
            return
        tasks = self.ctr.ctr("task", "ls", "-q", check=False, timeout=30).stdout.split()
        if tasks:
            self.ctr.ctr("task", "delete", "--force", *tasks, check=False, timeout=60)

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        while pids := cgroup_pids(self.cgroup_root):
            if time.monotonic() > deadline:
                log.error("processes survive in the node's cgroup",
                          extra={"cgroup": self.cgroup_root, "pids": pids})
                break
            for pid in pids:  # container processes of this node only
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        remove_cgroup_tree(self.cgroup_root)
