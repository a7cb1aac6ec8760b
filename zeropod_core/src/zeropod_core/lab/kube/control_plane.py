"""The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

On the host, with ports the kernel picked free. etcd speaks plain HTTP on 127.0.0.1 (only the
apiserver uses it); the apiserver serves TLS with RBAC and Node authorization on the host's
address on the lab bridge, which it also advertises: the nodes, each in its own network
namespace, reach it there (and the ``kubernetes`` Service's endpoint must not be loopback).
The controller-manager and the scheduler stay on 127.0.0.1. Every component authenticates with
its own client certificate. The controller-manager is required even without Deployments: it
creates the ``default`` ServiceAccount's token, without which the apiserver admits no pod.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .api import KubeApi
from .binaries import KubeBinaries
from .pki import CertFiles, ClusterPki, write_kubeconfig
from .procs import LabProcess, free_port, wait_until

log = logging.getLogger("zeropod.lab.kube")

DEFAULT_SERVICE_CIDR = "10.96.0.0/24"  # never routed: there is no kube-proxy in the lab


@dataclass
class ControlPlane:
    """The control plane's processes and how to reach the apiserver."""

    base: Path
    pki: ClusterPki
    address: str
    port: int
    admin: CertFiles
    admin_kubeconfig: Path
    service_accounts: CertFiles
    etcd: LabProcess
    apiserver: LabProcess
    controller_manager: LabProcess | None = None
    scheduler: LabProcess | None = None
    _api: KubeApi | None = None

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.port}"

    def api(self) -> KubeApi:
        """A client authenticated as the cluster admin (group system:masters)."""
        if self._api is None:
            self._api = KubeApi(self.server, self.pki.ca.cert, self.admin)
        return self._api

    @classmethod
    def start(cls, base: Path, binaries: KubeBinaries, pki: ClusterPki, *,
              address: str, service_cidr: str = DEFAULT_SERVICE_CIDR,
              verbosity: int = 1) -> ControlPlane:
        """Start etcd and the apiserver (not waited for: see :meth:`wait_ready`).

        :param address: a host address the nodes reach: the apiserver listens there and
            advertises it.
        """
        base.mkdir(parents=True, exist_ok=True)
        client_port, peer_port, port = free_port(), free_port(), free_port(address)
        etcd_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        etcd = LabProcess.spawn("etcd", [
            str(binaries.etcd), "--name", "lab", "--data-dir", str(base / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"lab={peer_url}", "--logger", "zap", "--log-level", "warn",
        ], base / "etcd.log")
        service_ip = service_cidr.rsplit(".", 1)[0] + ".1"
        serving = pki.issue("apiserver", "kube-apiserver", server=True,
                            dns=("localhost", "kubernetes", "kubernetes.default",
                                 "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
                            ips=("127.0.0.1", address, service_ip))
        kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                   groups=("system:masters",))
        service_accounts = pki.key_pair("service-accounts")
        admin = pki.issue("admin", "lab-admin", groups=("system:masters",))
        apiserver = LabProcess.spawn("kube-apiserver", [
            str(binaries.k8s("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={address}", f"--secure-port={port}", "--insecure-port=0",
            f"--advertise-address={address}",
            f"--cert-dir={base / 'apiserver-certs'}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={service_cidr}",
            f"--service-account-key-file={service_accounts.cert}",
            f"--service-account-signing-key-file={service_accounts.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false", f"--v={verbosity}",
        ], base / "kube-apiserver.log")
        kubeconfig = write_kubeconfig(base / "admin.kubeconfig",
                                      server=f"https://{address}:{port}", ca=pki.ca.cert,
                                      client=admin, user="lab-admin")
        return cls(base=base, pki=pki, address=address, port=port, admin=admin,
                   admin_kubeconfig=kubeconfig,
                   service_accounts=service_accounts, etcd=etcd, apiserver=apiserver)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the apiserver's ``/readyz`` (etcd reachable, bootstrap RBAC in place)."""
        api = self.api()
        wait_until("kube-apiserver /readyz", api.ready, timeout=timeout,
                   watch=[self.etcd, self.apiserver], interval=0.1)

    def start_controllers(self, binaries: KubeBinaries, *, verbosity: int = 1) -> None:
        """Start the controller-manager and the scheduler, each with its own identity."""
        for name, user in (("kube-controller-manager", "system:kube-controller-manager"),
                           ("kube-scheduler", "system:kube-scheduler")):
            client = self.pki.issue(name, user)
            kubeconfig = write_kubeconfig(self.base / f"{name}.kubeconfig", server=self.server,
                                          ca=self.pki.ca.cert, client=client, user=user)
            common = [
                f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--port=0",
                "--leader-elect=false", f"--v={verbosity}",
            ]
            if name == "kube-controller-manager":
                extra = [f"--service-account-private-key-file={self.service_accounts.key}",
                         f"--root-ca-file={self.pki.ca.cert}",
                         "--use-service-account-credentials=true",
                         f"--cert-dir={self.base / 'controller-manager-certs'}"]
            else:
                extra = [f"--cert-dir={self.base / 'scheduler-certs'}"]
            proc = LabProcess.spawn(name, [str(binaries.k8s(name)), *common, *extra],
                                    self.base / f"{name}.log")
            if name == "kube-controller-manager":
                self.controller_manager = proc
            else:
                self.scheduler = proc

    def processes(self) -> list[LabProcess]:
        return [p for p in (self.etcd, self.apiserver, self.controller_manager, self.scheduler)
                if p is not None]

    def stop(self) -> None:
        """Stop the components by PID, the apiserver's clients first, etcd last."""
        for proc in reversed(self.processes()):
            try:
                proc.stop()
            except Exception:
                log.exception("stopping failed", extra={"component": proc.name})
