"""The node's own addresses, so the kubelet's probes never count as activity, out of the box.

The kubelet runs in the node's network namespace, the shim's too: its probes reach a pod from
one of the addresses this namespace owns (the CNI bridge's, the node IP...). Rather than
learning "the kubelet's address" from a packet (upstream's heuristic, which misses an address
change and had to be taught IPv4-mapped IPv6), the tracker ignores every address of the node
namespace, read from the kernel's own tables:

* IPv4: ``/proc/net/fib_trie`` entries marked ``/32 host LOCAL``;
* IPv6: ``/proc/net/if_inet6``.

The set is re-read at most every ``REFRESH_S`` seconds when the tracker is asked for the last
activity, so an address that appears later (a new bridge, a changed node IP) is ignored from
the next check on. IPv4 addresses are stored in the map IPv4-mapped (``::ffff:a.b.c.d``), the
same key for a packet whichever family the kernel shows it with.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("zeropod.ebpf.node")

REFRESH_S = 5.0
# thread-self: a thread that joined another namespace (tests) reads that namespace's tables
FIB_TRIE = Path("/proc/thread-self/net/fib_trie")
IF_INET6 = Path("/proc/thread-self/net/if_inet6")


def local_ipv4(fib_trie: str) -> set[str]:
    """The addresses that ``/proc/net/fib_trie`` marks as this host's own (``/32 host LOCAL``)."""
    found: set[str] = set()
    leaf = ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            leaf = text[3:].strip()
        elif text.startswith("/32 host LOCAL") and leaf:
            found.add(str(ipaddress.IPv4Address(leaf)))
    return found


def local_ipv6(if_inet6: str) -> set[str]:
    """The addresses of ``/proc/net/if_inet6`` (first column: 32 hex digits)."""
    found: set[str] = set()
    for line in if_inet6.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return found


def read_node_addresses() -> frozenset[str]:
    """The addresses of the namespace this process runs in (the node's, for a shim) that can
    reach a pod: loopback (a setting of its own) and link-local ones (never the source towards
    a pod IP; one per veth on a busy node) are left out."""
    addresses: set[str] = set()
    for path, parse in ((FIB_TRIE, local_ipv4), (IF_INET6, local_ipv6)):
        try:
            addresses |= parse(path.read_text())
        except OSError as exc:
            log.warning("cannot read the node's addresses", extra={"path": str(path),
                                                                   "error": str(exc)})
    return frozenset(a for a in addresses if not (ipaddress.ip_address(a).is_loopback
                                                  or ipaddress.ip_address(a).is_link_local))


class NodeAddresses:
    """The node's addresses, re-read at most every ``refresh_s`` seconds.

    :param reader: what reads them (default: this process's namespace, the node's).
    """

    def __init__(self, refresh_s: float = REFRESH_S,
                 reader: Callable[[], frozenset[str]] = read_node_addresses) -> None:
        self.refresh_s, self._reader = refresh_s, reader
        self._addresses: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def current(self) -> frozenset[str]:
        """The addresses, re-read when the last read is older than ``refresh_s``."""
        now = time.monotonic()
        if now - self._read_at >= self.refresh_s:
            fresh = self._reader()
            if fresh != self._addresses:
                log.info("node addresses (not activity)", extra={
                    "added": sorted(fresh - self._addresses),
                    "removed": sorted(self._addresses - fresh)})
            self._addresses, self._read_at = fresh, now
        return self._addresses
