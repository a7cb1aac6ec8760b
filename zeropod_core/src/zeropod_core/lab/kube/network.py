"""The lab's networks: one bridge on the host for the nodes, one CNI bridge per node for its pods.

Each node lives in a network namespace of its own (as kind runs nodes in containers), so the
machine's addresses, ports and routes stay apart from the nodes' and two nodes can each have a
kubelet on port 10250:

* **the lab network** (:class:`LabNetwork`): a host bridge ``zpl-<random>`` on a free /24 whose
  first address is the host's gateway address. The apiserver listens there (the nodes reach it
  from their namespaces), and the host has a route to each node's pod /24 via that node's IP,
  so tests on the host reach every node and pod. The host never forwards a packet: it only
  sends and receives its own, and ``ip_forward`` of the host is not touched.
* **a node's network** (:class:`NodeNetwork`): a veth pair, ``zpv-<random>`` on the lab bridge
  and ``eth0`` in the node's namespace holding the node IP; in the namespace a CNI bridge
  ``zpk-<random>`` with the first address of the node's pod /24 (the node's address on the pod
  network: the kubelet's probes come from it), and a route to every other node's pod /24 via
  that node's IP. ``ip_forward`` is on inside the node's namespace only (each namespace has its
  own), so pods on one node reach pods on another through the two nodes and the lab bridge.

CNI's ``bridge`` plugin runs with ``isGateway: false`` and ``ipMasq: false``: no iptables rules,
no default route in the pods. The pods get routes to the lab's pod range and to the lab network
via their node's bridge address: they reach other pods, the nodes and the host's gateway
address, and nothing else. /24s are chosen at random among the ones of the lab's range
(``10.77.0.0/16`` unless told otherwise) that no address or route on the host uses yet, so two
clusters can coexist.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import secrets
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("zeropod.lab.kube")

DEFAULT_POD_RANGE = "10.77.0.0/16"
NODE_INTERFACE = "eth0"  # the node's interface on the lab network, inside its namespace


def _ip(*args: str, check: bool = True, netns: str | None = None,
        stdin: str | None = None) -> str:
    """Run ``ip`` (inside the network namespace file ``netns`` when given)."""
    prefix = ["nsenter", f"--net={netns}", "--"] if netns else []
    proc = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, input=stdin)
    if check and proc.returncode != 0:
        where = f" in {netns}" if netns else ""
        raise RuntimeError(f"ip {' '.join(args)}{where} failed: {proc.stderr.strip()}")
    return proc.stdout


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used = []
    for entry in json.loads(_ip("-4", "-j", "route", "show", "table", "all") or "[]"):
        dst = entry.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(_ip("-4", "-j", "addr", "show") or "[]"):
        for addr in link.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}",
                                              strict=False))
    return used


def pick_subnets(count: int, pod_range: str = DEFAULT_POD_RANGE,
                 taken: Iterable[ipaddress.IPv4Network] = ()) -> list[ipaddress.IPv4Network]:
    """``count`` different /24s of ``pod_range`` that overlap no address or route on this host
    and none of ``taken``."""
    candidates = list(ipaddress.IPv4Network(pod_range).subnets(new_prefix=24))
    used = [u for u in _networks_in_use() if u.prefixlen > 0] + list(taken)
    free = [net for net in candidates if not any(net.overlaps(u) for u in used)]
    if len(free) < count:
        raise RuntimeError(f"no {count} free /24s left in {pod_range} for the lab's networks")
    return random.sample(free, count)


def pick_subnet(pod_range: str = DEFAULT_POD_RANGE) -> ipaddress.IPv4Network:
    """A /24 of ``pod_range`` that overlaps no address or route on this host."""
    return pick_subnets(1, pod_range)[0]


@dataclass
class LabNetwork:
    """The host bridge ``bridge`` on ``subnet``; ``gateway`` is the host's address on it."""

    bridge: str
    subnet: ipaddress.IPv4Network
    created: bool = False
    _next_host: int = 1  # index into subnet.hosts(): 0 is the gateway

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls, subnet: ipaddress.IPv4Network) -> LabNetwork:
        """Make a uniquely named bridge (``zpl-<random>``) holding the gateway address, up."""
        if subnet.prefixlen > 24:
            raise ValueError(f"the lab network must be /24 or larger, not {subnet}")
        net = cls(bridge=f"zpl-{secrets.token_hex(3)}", subnet=subnet)
        _ip("link", "add", net.bridge, "type", "bridge")
        net.created = True
        try:
            _ip("addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
        except BaseException:
            net.delete()
            raise
        log.info("lab network", extra={"bridge": net.bridge, "subnet": str(subnet)})
        return net

    def next_node_ip(self) -> str:
        """A node IP no node of this network has yet (``.2``, ``.3``, ...)."""
        hosts = list(self.subnet.hosts())
        if self._next_host >= len(hosts):
            raise RuntimeError(f"the lab network {self.subnet} has no address left for a node")
        address = str(hosts[self._next_host])
        self._next_host += 1
        return address

    def delete(self) -> None:
        """Delete the bridge; the host's routes to the pods go with it. Safe to call twice."""
        if self.created:
            _ip("link", "delete", self.bridge, check=False)
            self.created = False


@dataclass
class NodeNetwork:
    """A node's links and routes: ``node_ip`` on ``eth0`` in the namespace ``netns`` (a
    ``/proc/<pid>/ns/net`` path), the CNI bridge ``bridge`` with the pod /24 ``subnet``."""

    bridge: str
    subnet: ipaddress.IPv4Network
    node_ip: str
    lab: LabNetwork
    netns: str
    pod_routes: list[ipaddress.IPv4Network] = field(default_factory=list)
    host_link: str = field(default_factory=lambda: f"zpv-{secrets.token_hex(3)}")
    created: bool = False

    @property
    def pod_gateway(self) -> str:
        """The node's address on its pod network (the first of the pod /24)."""
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls, lab: LabNetwork, subnet: ipaddress.IPv4Network, holder_pid: int,
               pod_routes: Sequence[ipaddress.IPv4Network]) -> NodeNetwork:
        """Wire the network namespace of process ``holder_pid`` to the lab bridge.

        :param pod_routes: what pods route via their node (the lab's pod range and network).
        """
        if subnet.prefixlen > 24:
            raise ValueError(f"a node subnet must be /24 or larger, not {subnet}")
        net = cls(bridge=f"zpk-{secrets.token_hex(3)}", subnet=subnet,
                  node_ip=lab.next_node_ip(), lab=lab, netns=f"/proc/{holder_pid}/ns/net",
                  pod_routes=list(pod_routes))
        _ip("link", "add", net.host_link, "type", "veth", "peer", "name", NODE_INTERFACE,
            "netns", str(holder_pid))
        net.created = True
        try:
            _ip("link", "set", net.host_link, "master", lab.bridge, "up")
            _ip("-batch", "-", netns=net.netns, stdin="\n".join([
                "link set lo up",
                f"addr add {net.node_ip}/{lab.subnet.prefixlen} dev {NODE_INTERFACE}",
                f"link set {NODE_INTERFACE} up",
                f"link add {net.bridge} type bridge",
                f"addr add {net.pod_gateway}/{subnet.prefixlen} dev {net.bridge}",
                f"link set {net.bridge} up"]) + "\n")
            # forwarding between the node's pods and eth0: this namespace's own switch
            subprocess.run(["nsenter", f"--net={net.netns}", "--", "sh", "-c",
                            "echo 1 > /proc/sys/net/ipv4/ip_forward"], check=True,
                           capture_output=True)
            _ip("route", "add", str(subnet), "via", net.node_ip, "dev", lab.bridge)
        except BaseException:
            net.delete()
            raise
        log.info("node network", extra={"node_ip": net.node_ip, "subnet": str(subnet),
                                        "bridge": net.bridge, "host_link": net.host_link})
        return net

    def route_to(self, other: NodeNetwork) -> None:
        """Reach ``other``'s pods through ``other``'s node IP, over the lab bridge."""
        _ip("route", "add", str(other.subnet), "via", other.node_ip, "dev", NODE_INTERFACE,
            netns=self.netns)

    def cni_config(self, ipam_dir: Path) -> dict[str, object]:
        """The conflist containerd's CRI plugin loads for this node's pods."""
        hosts = list(self.subnet.hosts())
        return {
            "cniVersion": "0.4.0",
            "name": f"zeropod-lab-{self.bridge}",
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    # .1 is the node's bridge address; pods start at .10
                    "ranges": [[{"subnet": str(self.subnet), "rangeStart": str(hosts[9]),
                                 "rangeEnd": str(hosts[-1]), "gateway": self.pod_gateway}]],
                    "routes": [{"dst": str(route)} for route in self.pod_routes],
                },
            }],
        }

    def delete(self) -> None:
        """Delete the host's end of the veth (the other end, the CNI bridge and the pods'
        veths go with the node's namespace) and the host's route to the pods. Safe to call
        twice."""
        if self.created:
            _ip("route", "delete", str(self.subnet), "dev", self.lab.bridge, check=False)
            _ip("link", "delete", self.host_link, check=False)
            self.created = False
