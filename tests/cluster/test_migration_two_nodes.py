"""Cold migration driven by Kubernetes across the lab's two nodes.

The same scenarios as ``test_migration_k8s.py`` (imported from there), with a source and a
target node each in its own network and mount namespaces and with its own manager: the
handed-over image travels from the source manager's image service to the target's over
mutual TLS, between the node IPs, instead of a rename on one node. The cluster is the
session's two-node one (``kube_cluster_two_nodes``); the target node is cordoned until the
source pod is deleted, so the Deployment's first pod lands on the source.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zeropod_core.lab.kube import KubeCluster
from zeropod_core.lab.kube.migration import MigrationLab, migration_lab

from .test_migration_k8s import (  # noqa: F401 - collected here with this module's lab
    test_a_running_container_fails_its_migration_at_once,
    test_a_sleeping_deployment_pod_moves_with_its_memory_and_files,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def lab(kube_cluster_two_nodes: KubeCluster) -> Iterator[MigrationLab]:
    cluster = kube_cluster_two_nodes
    with migration_lab(cluster=cluster, nodes=cluster.nodes[:2]) as running:
        assert running.two_nodes and running.source.name != running.target.name
        yield running
