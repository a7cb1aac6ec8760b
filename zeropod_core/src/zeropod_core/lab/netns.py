"""Network namespaces for the lab: a "pod" and a "client" joined by a veth pair.

Addresses exist only inside the two namespaces, so test traffic never leaves them. Sockets are
created *inside* a namespace from a short-lived thread that calls ``setns(2)``: the network
namespace is a per-thread attribute, and a socket stays in the namespace it was created in, so
the rest of the program can use it from any thread without ``ip netns exec`` (which would cost
a process start per request and skew timings).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zeropod_core.netns import run_in_netns, socket_in

__all__ = ["NETNS_DIR", "PodNetwork", "parent_pid", "run_in_netns", "socket_in"]

log = logging.getLogger("zeropod.lab.netns")

NETNS_DIR = Path("/var/run/netns")
_subnets = itertools.count(os.getpid() % 200)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


@dataclass
class PodNetwork:
    """Two namespaces and a veth between them: ``eth0`` in each, IPv4 and IPv6 addresses.

    :ivar pod: name of the pod's namespace (the container joins it).
    :ivar client: name of the client's namespace (requests come from here).
    """

    pod: str
    client: str
    pod_ip: str
    client_ip: str
    pod_ip6: str
    client_ip6: str

    @property
    def pod_path(self) -> Path:
        return NETNS_DIR / self.pod

    @property
    def client_path(self) -> Path:
        return NETNS_DIR / self.client

    @classmethod
    def create(cls, prefix: str = "zp") -> PodNetwork:
        """Make a uniquely named pod/client namespace pair (``<prefix>-<random>-pod``)."""
        tag = secrets.token_hex(3)
        subnet = next(_subnets) % 250
        net = cls(
            pod=f"{prefix}-{tag}-pod", client=f"{prefix}-{tag}-cli",
            pod_ip=f"10.213.{subnet}.1", client_ip=f"10.213.{subnet}.2",
            pod_ip6=f"fd00:7a70:{subnet:x}::1", client_ip6=f"fd00:7a70:{subnet:x}::2",
        )
        try:
            _ip("netns", "add", net.pod)
            _ip("netns", "add", net.client)
            _ip("-n", net.pod, "link", "add", "eth0", "type", "veth",
                "peer", "name", "eth0", "netns", net.client)
            for ns, ip4, ip6 in ((net.pod, net.pod_ip, net.pod_ip6),
                                 (net.client, net.client_ip, net.client_ip6)):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{ip4}/24", "dev", "eth0")
                _ip("-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            net.delete()
            raise
        log.debug("created pod network", extra={"pod": net.pod, "client": net.client})
        return net

    def pod_pids(self) -> list[int]:
        """Host PIDs of the processes in the pod's namespace: the app while it runs
        (containerd keeps reporting the first PID; a restored app has a new host PID)."""
        out = subprocess.run(["ip", "netns", "pids", self.pod], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def wait_asleep(self, timeout: float = 15.0) -> float:
        """Wait until no process runs in the pod (scaled down); return the seconds waited.

        Raises TimeoutError when the app still runs after ``timeout``.
        """
        start = time.monotonic()
        while self.pod_pids():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"the app in {self.pod} still runs after {timeout} s")
            time.sleep(0.01)
        return time.monotonic() - start

    def delete(self) -> None:
        """Remove both namespaces (the veth goes with them). Safe to call twice."""
        for ns in (self.pod, self.client):
            if (NETNS_DIR / ns).exists():
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True)

    def set_tx_checksum_offload(self, enabled: bool) -> None:
        """Switch checksum and segmentation offload of both veth ends (off finds csum bugs)."""
        state = "on" if enabled else "off"
        for ns in (self.pod, self.client):
            subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", state,
                            "tso", state, "gso", state], check=True, capture_output=True)


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` (for a container's app: its shim, which is a subreaper)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])
