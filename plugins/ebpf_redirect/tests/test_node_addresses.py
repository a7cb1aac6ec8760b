"""The node's own addresses are not activity (the kubelet's probes), with nothing configured."""

from __future__ import annotations

import asyncio
import time

from zpebpf_lab import APP_PORT, POD_V4, POD_V6, Lab, request, requires_root

from zeropod_core.model import ContainerInfo
from zeropod_core.netns import run_in_netns
from zeropod_ebpf_redirect.node_addresses import (
    NodeAddresses,
    local_ipv4,
    local_ipv6,
    read_node_addresses,
)
from zeropod_ebpf_redirect.pod import Pod
from zeropod_ebpf_redirect.settings import PluginSettings, TrackerFilter
from zeropod_ebpf_redirect.tracker import EbpfActivityTracker

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.88.77.0/24 2 0 2
        |-- 10.88.77.0
           /24 link UNICAST
        |-- 10.88.77.1
           /32 host LOCAL
        |-- 10.88.77.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 127.0.0.1
        /32 host LOCAL
     |-- 192.0.2.2
        /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
"""


def test_parsers_read_the_kernel_tables() -> None:
    assert local_ipv4(FIB_TRIE) == {"10.88.77.1", "127.0.0.1", "192.0.2.2"}
    assert local_ipv6(IF_INET6) == {"::1", "fd00::2", "fe80::fc:ff:fe00:1"}


def test_refresh_is_throttled_and_follows_changes() -> None:
    seen = [frozenset({"10.0.0.1"})]
    node = NodeAddresses(refresh_s=0.2, reader=lambda: seen[0])
    assert node.current() == {"10.0.0.1"}
    seen[0] = frozenset({"10.0.0.2"})
    assert node.current() == {"10.0.0.1"}  # not yet re-read
    time.sleep(0.25)
    assert node.current() == {"10.0.0.2"}


@requires_root
async def test_traffic_from_the_node_is_not_activity(lab: Lab) -> None:
    """The lab's client namespace plays the node: its addresses (v4 and v6) are read from the
    kernel and ignored; once the node loses that role, the same client counts again."""
    pod = Pod("node-pod", lab.pod_path, PluginSettings(bpf_root=lab.bpffs))
    lab.defer(pod.teardown)
    node_role = [True]

    def node_namespace_addresses() -> frozenset[str]:
        if not node_role[0]:
            return frozenset()
        return run_in_netns(lab.client_path, read_node_addresses)

    pod._node = NodeAddresses(refresh_s=0.0, reader=node_namespace_addresses)
    container = ContainerInfo(id="c1", bundle="/nonexistent", namespace="test",
                              netns_path=lab.pod_path)
    tracker = EbpfActivityTracker(pod, container, TrackerFilter())  # defaults: ignore node
    lab.server(APP_PORT, "APP")
    await tracker.track([APP_PORT])
    assert request(lab.client_path, POD_V4, APP_PORT).tag == "APP"
    assert request(lab.client_path, POD_V6, APP_PORT).tag == "APP"
    await asyncio.sleep(0.1)
    assert tracker.last_activity() is None, "the node's own traffic counted as activity"

    node_role[0] = False  # e.g. the address moved away: refreshed at the next read
    assert tracker.last_activity() is None
    assert request(lab.client_path, POD_V4, APP_PORT).tag == "APP"
    await asyncio.sleep(0.1)
    assert tracker.last_activity() is not None
    await tracker.close()
