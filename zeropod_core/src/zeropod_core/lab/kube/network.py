"""A node's pod network: a Linux bridge of the lab's own with one /24, and its CNI config.

The bridge carries the node's IP (the kubelet refuses a loopback node IP) and the pods' veths.
CNI's ``bridge`` plugin runs with ``isGateway: false`` and ``ipMasq: false``: it adds no
iptables rules and no default route in the pods, and ``ip_forward`` is not touched, so pods
are reachable from the host through the bridge and reach nothing else. Each node takes a free
/24 out of the lab's range (``10.77.0.0/16`` unless told otherwise), chosen at random among the
ones no address or route on the host uses yet, so two clusters (or nodes) can coexist.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("zeropod.lab.kube")

DEFAULT_POD_RANGE = "10.77.0.0/16"


def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
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


def pick_subnet(pod_range: str = DEFAULT_POD_RANGE) -> ipaddress.IPv4Network:
    """A /24 of ``pod_range`` that overlaps no address or route on this host."""
    candidates = list(ipaddress.IPv4Network(pod_range).subnets(new_prefix=24))
    used = _networks_in_use()
    free = [net for net in candidates
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0)]
    if not free:
        raise RuntimeError(f"no free /24 left in {pod_range} for a lab node")
    return random.choice(free)


@dataclass
class NodeNetwork:
    """The bridge ``name`` with ``gateway`` (the node IP) on ``subnet``."""

    bridge: str
    subnet: ipaddress.IPv4Network
    created: bool = False

    @property
    def node_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls, subnet: str | None = None,
               pod_range: str = DEFAULT_POD_RANGE) -> NodeNetwork:
        """Make a uniquely named bridge (``zpk-<random>``) holding the node IP, link up."""
        net = cls(bridge=f"zpk-{secrets.token_hex(3)}",
                  subnet=ipaddress.IPv4Network(subnet) if subnet else pick_subnet(pod_range))
        if net.subnet.prefixlen > 24:
            raise ValueError(f"a node subnet must be /24 or larger, not {net.subnet}")
        _ip("link", "add", net.bridge, "type", "bridge")
        net.created = True
        try:
            _ip("addr", "add", f"{net.node_ip}/{net.subnet.prefixlen}", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
        except BaseException:
            net.delete()
            raise
        log.info("node network", extra={"bridge": net.bridge, "subnet": str(net.subnet)})
        return net

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
                    # .1 is the node; pods start at .10
                    "ranges": [[{"subnet": str(self.subnet), "rangeStart": str(hosts[9]),
                                 "rangeEnd": str(hosts[-1])}]],
                },
            }],
        }

    def delete(self) -> None:
        """Delete the bridge (pods' veths went with their namespaces). Safe to call twice."""
        if self.created:
            _ip("link", "delete", self.bridge, check=False)
            self.created = False
