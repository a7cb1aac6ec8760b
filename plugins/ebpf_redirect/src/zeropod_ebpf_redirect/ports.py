"""How activator ports are chosen: a per-pod pool below the ephemeral port range.

Why below 32768: the egress program rewrites the source port of *every* packet leaving from
an activator port (``reverse`` map). If that port were inside ``ip_local_port_range``
(default 32768-60999), an outgoing connection of the app that happened to get it as its
ephemeral port would have its packets rewritten and break (measured: "reverse present:
FAIL"). Ports below the range are never picked by the kernel for outgoing connections.

How: the pool defaults to 32000-32767 (setting ``ZEROPOD_ACTIVATOR_PORTS``, ``first-last``).
Each app port gets a preferred slot, ``first + app_port % size``, so the same app port gets
the same activator port again after a shim restart, and collisions are resolved by linear
probing. One allocator exists per pod (all containers of a pod share one shim and one network
namespace), so ports are collision-free inside the pod; pods have separate namespaces and may
reuse the same numbers. Ports that are app ports of the pod are never handed out. Ports still
present in the pod's ``reverse`` map (left by an earlier shim of the same pod) are adopted for
their app port or avoided.

The pool does not know about other listeners of the app: an app listening inside the pool
(rare: the range sits right below the ephemeral range and is unusual for servers) makes the
activator's bind fail with EADDRINUSE; move the pool with ``ZEROPOD_ACTIVATOR_PORTS`` then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("zeropod.ebpf.ports")

EPHEMERAL_DEFAULT = (32768, 60999)


@dataclass(frozen=True)
class PortRange:
    """An inclusive range of TCP ports."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last <= 65535:
            raise ValueError(f"invalid port range {self.first}-{self.last}")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"32000-32767"`` -> PortRange(32000, 32767); raises ValueError when malformed."""
        first, sep, last = text.strip().partition("-")
        try:
            return cls(int(first), int(last) if sep else int(first))
        except ValueError:
            raise ValueError(f"port range must look like 32000-32767, got {text!r}") from None

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def overlaps_ephemeral(self) -> bool:
        """True when the range reaches into the kernel's default ephemeral port range."""
        return self.last >= EPHEMERAL_DEFAULT[0] and self.first <= EPHEMERAL_DEFAULT[1]

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


DEFAULT_POOL = PortRange(32000, 32767)


class PoolExhausted(Exception):
    """Every port of the pool is assigned (a pod with more app ports than the pool size)."""


class ActivatorPorts:
    """Assigns activator ports to the app ports of one pod."""

    def __init__(self, pool: PortRange = DEFAULT_POOL) -> None:
        if pool.overlaps_ephemeral():
            log.warning("activator port pool overlaps the default ephemeral range",
                        extra={"pool": str(pool), "ephemeral": "{}-{}".format(*EPHEMERAL_DEFAULT)})
        self.pool = pool
        self._by_app: dict[int, int] = {}
        self._by_activator: dict[int, int] = {}

    def port_for(self, app_port: int) -> int:
        """The activator port of ``app_port``, assigning one on first use."""
        if not 1 <= app_port <= 65535:
            raise ValueError(f"invalid app port {app_port}")
        if app_port in self._by_app:
            return self._by_app[app_port]
        start = app_port % self.pool.size
        for step in range(self.pool.size):
            candidate = self.pool.first + (start + step) % self.pool.size
            if candidate in self._by_activator or candidate in self._by_app:
                continue
            self._assign(app_port, candidate)
            return candidate
        raise PoolExhausted(f"no free activator port in {self.pool} for app port {app_port}")

    def adopt(self, activator_port: int, app_port: int) -> None:
        """Take over an assignment found in the pod's ``reverse`` map (an earlier shim's)."""
        if app_port in self._by_app or activator_port in self._by_activator:
            return
        self._assign(app_port, activator_port)

    def release(self, app_port: int) -> None:
        """Forget ``app_port``'s assignment (its container is gone)."""
        activator = self._by_app.pop(app_port, None)
        if activator is not None:
            self._by_activator.pop(activator, None)

    def assigned(self) -> dict[int, int]:
        """app port -> activator port, for everything assigned now."""
        return dict(self._by_app)

    def _assign(self, app_port: int, activator_port: int) -> None:
        # An app port equal to an activator port handed out earlier cannot be fixed here (that
        # activator may already listen on it); log it so the bind failure that follows is
        # explained.
        if app_port in self._by_activator:
            log.warning("app port is already an activator port of this pod",
                        extra={"app_port": app_port})
        self._by_app[app_port] = activator_port
        self._by_activator[activator_port] = app_port
