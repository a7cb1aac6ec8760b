"""A second cluster, with two nodes, beside the session's: its own /24s, bridges, namespaces,
cgroup roots and folder, and nothing of it left once stopped."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from zeropod_core.lab.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _netns_ids() -> set[str]:
    """The network namespaces any process on the machine is in."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.add(os.readlink(entry / "ns" / "net"))
    return found


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def test_second_cluster_coexists_and_leaves_no_trace(kube_cluster: KubeCluster) -> None:
    other = KubeCluster.start(nodes=2, app_images=[])
    try:
        assert other.lab_network is not None and kube_cluster.lab_network is not None
        lab = other.lab_network
        assert lab.bridge != kube_cluster.lab_network.bridge
        assert not lab.subnet.overlaps(kube_cluster.lab_network.subnet)
        mine = {n.network.subnet for n in other.nodes}
        assert len(mine) == 2 and kube_cluster.node.network.subnet not in mine
        assert kube_cluster.node.cgroup_root not in {n.cgroup_root for n in other.nodes}
        names = other.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert sorted(names) == sorted(f"node/{n.name}" for n in other.nodes)
        netns, holders, inside, links = set(), [], [], {lab.bridge}
        for node in other.nodes:
            assert node.mounts is not None
            holders.append(node.mounts.holder.pid)
            netns.add(os.readlink(f"/proc/{node.mounts.holder.pid}/ns/net"))
            inside += node.mounts.pids_inside()
            assert node.containerd is not None and node.containerd.pid in inside
            links.add(node.network.host_link)
        assert links <= _host_links()
        daemons = [p.pid for p in other.processes()]
        nodes = list(other.nodes)
    finally:
        other.stop()
    assert not other.base.exists()
    assert not links & _host_links(), "a lab link is left on the host"
    assert not netns & _netns_ids(), "a node's network namespace is left"
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                            check=True).stdout
    assert not any(str(node.network.subnet) in routes for node in nodes)
    for node in nodes:
        assert not any((h / node.cgroup_root).exists() for h in Path("/sys/fs/cgroup").iterdir())
    assert str(other.base) not in Path("/proc/self/mountinfo").read_text()
    for pid in [*holders, *inside, *daemons]:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0
    # the session's cluster is untouched
    assert kube_cluster.kubectl("get", "nodes", "-o", "name").stdout.strip() == \
        f"node/{kube_cluster.node.name}"
