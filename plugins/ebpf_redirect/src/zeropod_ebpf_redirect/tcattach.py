"""Attach and detach the programs as clsact direct-action filters with pyroute2 (loader only).

Every filter is installed with ``replace-filter`` at a fixed priority and handle, so running
the loader again replaces the pod's filter atomically instead of stacking a second one
(without ``prio`` pyroute2 adds a new filter each time: measured, both programs stayed
attached). The netlink socket is the calling thread's: the loader joins the pod's network
namespace first (:func:`zeropod_ebpf_redirect.netns.enter`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

PRIO = 1
HANDLE = 1
PARENT_INGRESS = 0xFFFFFFF2  # "ffff:fff2", clsact ingress
PARENT_EGRESS = 0xFFFFFFF3  # "ffff:fff3", clsact egress
FILTER_PREFIX = "zeropod_"  # program names; TCA_BPF_NAME shows them in `tc filter show`


@dataclass(frozen=True)
class Filter:
    """One tc filter as the kernel reports it."""

    iface: str
    parent: int
    prio: int
    handle: int
    kind: str
    name: str

    @property
    def ours(self) -> bool:
        return (self.kind == "bpf" and self.prio == PRIO and self.handle == HANDLE
                and self.name.startswith(FILTER_PREFIX))


def open_route() -> IPRoute:
    """A netlink route socket in the calling thread's network namespace."""
    return IPRoute()


def ifindex(ipr: IPRoute, iface: str) -> int:
    found = ipr.link_lookup(ifname=iface)
    if not found:
        raise FileNotFoundError(errno.ENODEV, f"no interface {iface} in this network namespace")
    return int(found[0])


def ensure_clsact(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def attach(ipr: IPRoute, iface: str, *, ingress: tuple[int, str], egress: tuple[int, str]) -> None:
    """Install (or atomically replace) the pod's ingress and egress filters on ``iface``.

    :param ingress: (program fd, name) for the clsact ingress hook.
    :param egress: (program fd, name) for the clsact egress hook.
    """
    index = ifindex(ipr, iface)
    ensure_clsact(ipr, index)
    for parent, (fd, name) in ((PARENT_INGRESS, ingress), (PARENT_EGRESS, egress)):
        ipr.tc("replace-filter", "bpf", index, HANDLE, fd=fd, name=name, parent=parent,
               classid=1, direct_action=True, prio=PRIO)


def filters(ipr: IPRoute, iface: str) -> list[Filter]:
    """Every filter on the clsact hooks of ``iface`` (ours and anybody else's)."""
    index = ifindex(ipr, iface)
    out: list[Filter] = []
    for parent in (PARENT_INGRESS, PARENT_EGRESS):
        try:
            msgs: Any = ipr.get_filters(index=index, parent=parent)
        except NetlinkError as exc:
            if exc.code in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc
                continue
            raise
        for msg in msgs:
            options = msg.get_attr("TCA_OPTIONS")
            kind = msg.get_attr("TCA_KIND") or ""
            if options is None:
                continue  # the chain/protocol header entry, not a filter
            info = int(msg["info"])
            out.append(Filter(iface=iface, parent=parent, prio=info >> 16,
                              handle=int(msg["handle"]), kind=kind,
                              name=options.get_attr("TCA_BPF_NAME") or ""))
    return out


def detach(ipr: IPRoute, iface: str) -> int:
    """Remove the pod's filters from ``iface``, and the clsact qdisc if nothing else uses it.

    Returns the number of filters removed. A missing interface or qdisc is not an error.
    """
    try:
        index = ifindex(ipr, iface)
    except FileNotFoundError:
        return 0
    removed = 0
    for flt in filters(ipr, iface):
        if not flt.ours:
            continue
        try:
            ipr.tc("del-filter", "bpf", index, HANDLE, parent=flt.parent, prio=PRIO)
            removed += 1
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise
    if not filters(ipr, iface):
        try:
            ipr.tc("del", "clsact", index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise
    return removed
