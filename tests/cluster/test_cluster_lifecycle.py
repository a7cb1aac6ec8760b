"""A second cluster beside the session's: its own /24, bridge, cgroup root and folder, and
nothing of it left once stopped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from zeropod_core.lab.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_second_cluster_coexists_and_leaves_no_trace(kube_cluster: KubeCluster) -> None:
    other = KubeCluster.start(app_images=[])
    try:
        node = other.node
        assert node.network.subnet != kube_cluster.node.network.subnet
        assert node.network.bridge != kube_cluster.node.network.bridge
        assert node.cgroup_root != kube_cluster.node.cgroup_root
        assert other.kubectl("get", "nodes", "-o", "name").stdout.strip() == f"node/{node.name}"
        assert node.mounts is not None
        inside = node.mounts.pids_inside()
        assert node.containerd is not None and node.containerd.pid in inside
        holder = node.mounts.holder.pid
        daemons = [p.pid for p in other.processes()]
    finally:
        other.stop()
    assert not other.base.exists()
    assert subprocess.run(["ip", "link", "show", node.network.bridge],
                          capture_output=True).returncode != 0
    assert not any((h / node.cgroup_root).exists() for h in Path("/sys/fs/cgroup").iterdir())
    for pid in [holder, *inside, *daemons]:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0
    # the session's cluster is untouched
    assert kube_cluster.kubectl("get", "nodes", "-o", "name").stdout.strip() == \
        f"node/{kube_cluster.node.name}"
