"""Where the cluster's programs are: the Kubernetes build of scripts/build-k8s, Debian's etcd
and CNI plugins, containerd 1.6 and nsenter/unshare."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# scripts/build-k8s links the build it made here (k8s -> k8s-<Debian source version>).
DEFAULT_K8S_HOME = Path(os.environ.get("ZEROPOD_OPT", "/opt/zeropod")) / "k8s"
CNI_BIN_DIR = Path("/usr/lib/cni")
K8S_PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                "kubectl", "pause")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
HOST_PROGRAMS = ("etcd", "containerd", "ctr", "runc", "nsenter", "unshare", "ip", "mount")


@dataclass(frozen=True)
class KubeBinaries:
    """Absolute paths of everything the lab cluster runs."""

    k8s_bin: Path
    etcd: Path
    containerd: Path

    def k8s(self, name: str) -> Path:
        return self.k8s_bin / name


def k8s_bin_dir() -> Path:
    """The folder with kube-apiserver & co (``ZEROPOD_K8S_BIN`` overrides the default)."""
    override = os.environ.get("ZEROPOD_K8S_BIN")
    return Path(override) if override else DEFAULT_K8S_HOME / "bin"


def missing_binaries() -> list[str]:
    """What is missing for the lab cluster, as paths or program names (empty: all there)."""
    bin_dir = k8s_bin_dir()
    missing = [str(bin_dir / p) for p in K8S_PROGRAMS if not os.access(bin_dir / p, os.X_OK)]
    missing += [str(CNI_BIN_DIR / p) for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).exists()]
    missing += [p for p in HOST_PROGRAMS if shutil.which(p) is None]
    return missing


def find_binaries() -> KubeBinaries:
    """The binaries, or FileNotFoundError naming what is missing and how to get it."""
    missing = missing_binaries()
    if missing:
        raise FileNotFoundError(
            f"the Kubernetes lab needs {', '.join(missing)}: run scripts/setup "
            "(scripts/build-k8s builds Kubernetes 1.20 once, a few minutes)")
    return KubeBinaries(k8s_bin=k8s_bin_dir(), etcd=Path(shutil.which("etcd") or "etcd"),
                        containerd=Path(shutil.which("containerd") or "containerd"))
