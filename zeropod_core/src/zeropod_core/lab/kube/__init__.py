"""A real Kubernetes 1.20 in the lab: etcd, kube-apiserver, controller-manager, scheduler and a
kubelet per node (each node in its own network and mount namespaces) on a private containerd
with CNI bridge networking, all in a temporary folder.

Built offline by ``scripts/build-k8s`` from Debian 12's source package; see docs/k8s-lab.md.
Start one with :meth:`KubeCluster.start` (or the ``kube_cluster`` and
``kube_cluster_two_nodes`` pytest fixtures); :func:`start_node_manager` runs a node's manager.
"""

from .binaries import find_binaries, missing_binaries
from .cluster import PAUSE_IMAGE, KubeCluster
from .node import KubeNode
from .node_manager import start_node_manager
from .procs import ClusterError
from .runtimes import CriRuntime, zeropod_runtime

__all__ = ["PAUSE_IMAGE", "ClusterError", "CriRuntime", "KubeCluster", "KubeNode",
           "find_binaries", "missing_binaries", "start_node_manager", "zeropod_runtime"]
