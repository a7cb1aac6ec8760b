"""The :class:`~zeropod_core.providers.ActivityTracker` of one container, on the ``activity`` map.

The program stamps ``activity[port] = bpf_ktime_get_ns()`` for every TCP packet to or from a
port that userspace registered (value 0 = "never"); it only ever updates existing entries, so
:meth:`EbpfActivityTracker.track` registering the ports is what turns tracking on.
``bpf_ktime_get_ns`` is CLOCK_MONOTONIC, the clock of ``time.monotonic()``, so converting is a
division (no offset), and "idle for" is ``time.monotonic() - last_activity()``.

Peers that do not count (loopback, node/kubelet addresses) are a pod-wide setting, see
:meth:`zeropod_ebpf_redirect.pod.Pod.set_tracker_filter`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from zeropod_core.model import ContainerInfo

from .pod import Pod
from .settings import TrackerFilter

log = logging.getLogger("zeropod.ebpf.tracker")

NS_PER_S = 1_000_000_000


class EbpfActivityTracker:
    """Reports the last TCP packet on one container's ports."""

    def __init__(self, pod: Pod, container: ContainerInfo, tracker: TrackerFilter) -> None:
        self._pod = pod
        self._container = container
        self._filter = tracker
        self._ports: set[int] = set()

    async def track(self, ports: Sequence[int]) -> None:
        """Record activity on ``ports`` from now on (replaces the earlier set).

        A port already registered keeps its timestamp (a re-track after restore does not
        forget the traffic that woke the container).
        """
        maps = await self._pod.ensure_loaded()
        wanted = set(ports)
        for port in wanted:
            if not 1 <= port <= 65535:
                raise ValueError(f"invalid port {port}")
        self._pod.set_tracker_filter(self._container.id, self._filter)
        for port in self._ports - wanted:
            maps.activity.delete(port)
        for port in wanted:
            maps.activity.insert(port, 0)
        self._ports = wanted
        log.debug("tracking", extra={"container": self._container.id, "pod": self._pod.key,
                                     "ports": sorted(wanted),
                                     "ignore_localhost": self._filter.ignore_localhost,
                                     "ignore_sources": list(self._filter.ignore_sources)})

    def last_activity_ns(self) -> int | None:
        """``bpf_ktime_get_ns()`` of the last packet on a tracked port, None if never."""
        maps = self._pod.maps_if_loaded()
        if maps is None:
            return None
        self._pod.refresh_node_addresses()
        latest = max((maps.activity.lookup(port) or 0 for port in self._ports), default=0)
        return latest or None

    def last_activity(self) -> float | None:
        """``time.monotonic()`` of the last packet on a tracked port, None if never."""
        latest = self.last_activity_ns()
        return None if latest is None else latest / NS_PER_S

    async def close(self) -> None:
        """Stop tracking: unregister the ports (the program stops stamping them)."""
        maps = self._pod.maps_if_loaded()
        if maps is not None:
            for port in self._ports:
                maps.activity.delete(port)
            self._pod.set_tracker_filter(self._container.id, None)
        self._ports = set()
