"""The :class:`~zeropod_core.providers.Redirector` of one container, on its pod's pinned maps.

What each call writes (all through ``bpf(2)``, microseconds each):

* :meth:`EbpfRedirector.redirect`: ``reverse[activator] = app`` first, then
  ``redirects[app] = activator``, so the reply to the first redirected SYN is already
  rewritten. From then on new connections to the app port land on the activator, and each
  one is remembered in the ``conns`` LRU map by the program.
* :meth:`EbpfRedirector.release`: deletes ``redirects[app]`` only. New connections go to the
  app again, while connections that started on the activator keep going there (``conns``)
  and their replies keep being rewritten (``reverse``): proxied connections are not reset.

What the activator must do (the contract with the core):

1. listen on ``activator_port(app_port)`` inside the pod's namespace *before* ``redirect``;
2. call ``release`` *before* opening its own connection to the app port for a proxied
   client, or that connection would be redirected to the activator itself;
3. call :meth:`EbpfRedirector.drained` (or ``close``) only after its proxied connections for
   those ports have ended: that deletes their ``conns`` entries and the ``reverse`` entry,
   after which packets of a still-open proxied connection would no longer be rewritten.
   Leaving the entries until ``close`` is harmless: activator ports lie outside the
   ephemeral range, so no other socket sends from them, and ``conns`` is an LRU map whose
   stale entries are replaced when a client reuses a 4-tuple.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from zeropod_core.model import ContainerInfo

from .maps import ConnKey
from .pod import Pod

log = logging.getLogger("zeropod.ebpf.redirector")


class RedirectConflict(RuntimeError):
    """The activator port is mapped to another app port in the pod's maps."""


class EbpfRedirector:
    """Redirects one container's app ports to its activator while it is scaled down."""

    def __init__(self, pod: Pod, container: ContainerInfo) -> None:
        self._pod = pod
        self._container = container
        self._ports: set[int] = set()

    @property
    def pod(self) -> Pod:
        return self._pod

    def activator_port(self, app_port: int) -> int:
        """The activator's port for ``app_port`` (stable, from the pod's pool; see ports.py)."""
        port = self._pod.ports.port_for(app_port)
        self._ports.add(app_port)
        return port

    async def redirect(self, ports: Sequence[int]) -> None:
        """Send new connections for ``ports`` to the activator (before the checkpoint)."""
        maps = await self._pod.ensure_loaded()
        mapping = {}
        for app in ports:
            activator = self.activator_port(app)
            owner = maps.reverse.lookup(activator)
            if owner is not None and owner != app:
                raise RedirectConflict(f"activator port {activator} already serves app port "
                                       f"{owner} in pod {self._pod.key}")
            maps.reverse.update(activator, app)
            maps.redirects.update(app, activator)
            mapping[app] = activator
        log.info("redirect on", extra={"container": self._container.id, "pod": self._pod.key,
                                       "ports": mapping})

    async def release(self, ports: Sequence[int]) -> None:
        """Send new connections to the app again; proxied connections stay on the activator."""
        maps = await self._pod.ensure_loaded()
        for app in ports:
            maps.redirects.delete(app)
        log.info("redirect off", extra={"container": self._container.id, "pod": self._pod.key,
                                        "ports": list(ports)})

    def proxied_connections(self, app_port: int | None = None) -> list[ConnKey]:
        """Connections the program keeps on the activator (``conns``), for one app port or all."""
        maps = self._pod.maps_if_loaded()
        if maps is None:
            return []
        mine = self._ports if app_port is None else {app_port}
        return [key for key, _ in maps.conns.items() if key.app_port in mine]

    async def drained(self, ports: Sequence[int]) -> None:
        """Forget the activator's connections for ``ports``; call once it has none left.

        The ``reverse`` entry is kept while the redirect of that port is still on.
        """
        maps = self._pod.maps_if_loaded()
        if maps is None:
            return
        wanted = set(ports)
        for key, _activator in list(maps.conns.items()):
            if key.app_port in wanted:
                maps.conns.delete(key)
        for app in wanted:
            if maps.redirects.lookup(app) is None:
                activator = self._pod.ports.assigned().get(app)
                if activator is not None and maps.reverse.lookup(activator) == app:
                    maps.reverse.delete(activator)
        log.debug("activator drained", extra={"container": self._container.id,
                                               "ports": sorted(wanted)})

    async def close(self) -> None:
        """Remove every entry this container put in the pod's maps and free its ports."""
        ports = sorted(self._ports)
        maps = self._pod.maps_if_loaded()
        if maps is not None:
            for app in ports:
                maps.redirects.delete(app)
            await self.drained(ports)
        for app in ports:
            self._pod.ports.release(app)
        self._ports.clear()
        log.debug("redirector closed", extra={"container": self._container.id,
                                              "ports": ports})

    def counters(self) -> dict[str, int]:
        """The pod program's packet counters (ingress/egress seen, redirected, rewritten)."""
        maps = self._pod.maps_if_loaded()
        return maps.counters() if maps is not None else {}
