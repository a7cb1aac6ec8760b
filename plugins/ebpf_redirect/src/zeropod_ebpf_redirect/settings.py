"""The plugin's configuration: process settings (``ZEROPOD_*``) and its pod annotations.

Process settings come from ``zeropod_configure`` (the shim's environment plus containerd's
runtime options) and fall back to ``os.environ``, so the providers also work when a test
builds them without the hook:

* ``ZEROPOD_BPF_ROOT`` (``/run/zeropod/bpf``): the bpffs root, mounted if needed; one
  directory of pins per pod below it.
* ``ZEROPOD_BPF_IFACES`` (``lo,eth0``): interfaces in the pod namespace that get the programs.
* ``ZEROPOD_ACTIVATOR_PORTS`` (``32000-32767``): the activator port pool (see :mod:`.ports`).
* ``ZEROPOD_TRACKER_IGNORE_LOCALHOST`` (``true``): loopback peers are not activity.
* ``ZEROPOD_TRACKER_IGNORE_SOURCES`` (empty): comma-separated peer addresses that are not
  activity, on top of the node's own.
* ``ZEROPOD_TRACKER_IGNORE_NODE`` (``true``): the node's own addresses (every address of the
  shim's network namespace, kept current) are not activity, so the kubelet's probes do not
  keep a pod awake; no address needs configuring (see :mod:`.node_addresses`).
* ``ZEROPOD_BPF_LOADER_TIMEOUT`` (``20``): seconds the loader helper may take.

The two tracker settings can be overridden per pod with the annotations
``zeropod.ctrox.dev/tracker-ignore-localhost`` and ``zeropod.ctrox.dev/tracker-ignore-sources``.
They act on the whole pod (its containers share one program instance).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from zeropod_core.config import parse_switch, switch_setting

from .ports import DEFAULT_POOL, PortRange

ANNOTATION_IGNORE_LOCALHOST = "zeropod.ctrox.dev/tracker-ignore-localhost"
ANNOTATION_IGNORE_SOURCES = "zeropod.ctrox.dev/tracker-ignore-sources"

def parse_addresses(value: str) -> tuple[str, ...]:
    """Comma-separated IPv4/IPv6 addresses, normalised; raises ValueError on a bad one."""
    out = []
    for item in value.split(","):
        if item.strip():
            out.append(str(ipaddress.ip_address(item.strip())))
    return tuple(out)


@dataclass(frozen=True)
class TrackerFilter:
    """Which peers do not count as activity."""

    ignore_localhost: bool = True
    ignore_sources: tuple[str, ...] = ()
    ignore_node: bool = True


@dataclass(frozen=True)
class PluginSettings:
    """Process-wide settings of the eBPF plugin (see the module doc for the variables)."""

    bpf_root: Path = Path("/run/zeropod/bpf")
    ifaces: tuple[str, ...] = ("lo", "eth0")
    activator_ports: PortRange = DEFAULT_POOL
    tracker: TrackerFilter = TrackerFilter()
    loader_timeout_s: float = 20.0

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> PluginSettings:
        """Read the ``ZEROPOD_*`` keys of ``env``; raises ValueError on malformed values."""
        base = cls()
        ifaces = tuple(i.strip() for i in env.get("ZEROPOD_BPF_IFACES", "").split(",")
                       if i.strip())
        tracker = TrackerFilter(
            ignore_localhost=parse_switch(env["ZEROPOD_TRACKER_IGNORE_LOCALHOST"])
            if "ZEROPOD_TRACKER_IGNORE_LOCALHOST" in env else base.tracker.ignore_localhost,
            ignore_sources=parse_addresses(env.get("ZEROPOD_TRACKER_IGNORE_SOURCES", "")),
            ignore_node=switch_setting(env, "ZEROPOD_TRACKER_IGNORE_NODE",
                                       base.tracker.ignore_node),
        )
        return cls(
            bpf_root=Path(env.get("ZEROPOD_BPF_ROOT") or base.bpf_root),
            ifaces=ifaces or base.ifaces,
            activator_ports=PortRange.parse(env["ZEROPOD_ACTIVATOR_PORTS"])
            if env.get("ZEROPOD_ACTIVATOR_PORTS") else base.activator_ports,
            tracker=tracker,
            loader_timeout_s=float(env.get("ZEROPOD_BPF_LOADER_TIMEOUT")
                                   or base.loader_timeout_s),
        )

    @classmethod
    def from_environ(cls) -> PluginSettings:
        return cls.from_mapping(os.environ)

    def tracker_for(self, annotations: Mapping[str, str]) -> TrackerFilter:
        """The tracker filter for a container: the process default, overridden by annotations."""
        tracker = self.tracker
        if ANNOTATION_IGNORE_LOCALHOST in annotations:
            tracker = replace(tracker, ignore_localhost=parse_switch(
                annotations[ANNOTATION_IGNORE_LOCALHOST]))
        if ANNOTATION_IGNORE_SOURCES in annotations:
            tracker = replace(tracker, ignore_sources=parse_addresses(
                annotations[ANNOTATION_IGNORE_SOURCES]))
        return tracker
