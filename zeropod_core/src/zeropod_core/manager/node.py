"""The manager's view of its node: shims appear and disappear as sockets in one folder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence

from zeropod_core.model import ManagedContainer

from .links import ShimLink, StatusCallback

log = logging.getLogger("zeropod.manager.node")

SCAN_INTERVAL_S = 0.5
REFRESH_TIMEOUT_S = 0.8


class Node:
    """Every shim link of this node; implements :class:`~zeropod_core.providers.NodeView`."""

    def __init__(self, socket_dir: str,
                 on_status: StatusCallback) -> None:
        self.socket_dir, self._on_status = socket_dir, on_status
        self.links: dict[str, ShimLink] = {}
        self._scanner: asyncio.Task[None] | None = None

    def containers(self) -> Sequence[ManagedContainer]:
        return [record for link in self.links.values() for record in link.records.values()]

    def start(self) -> None:
        self.scan()
        self._scanner = asyncio.get_running_loop().create_task(self._scan_forever(),
                                                               name="shim-scanner")

    async def close(self) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
        await asyncio.gather(*(link.close() for link in self.links.values()))
        self.links.clear()

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(SCAN_INTERVAL_S)
            self.scan()

    def scan(self) -> None:
        """Link new sockets, drop links whose socket disappeared."""
        try:
            names = {n for n in os.listdir(self.socket_dir) if n.endswith(".sock")}
        except OSError:
            names = set()
        for name in names:
            path = os.path.join(self.socket_dir, name)
            if path not in self.links:
                link = ShimLink(path, self._on_status)
                self.links[path] = link
                link.start()
                log.info("shim found", extra={"shim": path})
        for path in [p for p in self.links if os.path.basename(p) not in names]:
            link = self.links.pop(path)
            asyncio.get_running_loop().create_task(link.close(), name="shim-link-close")
            log.info("shim removed", extra={"shim": path, "containers": len(link.records)})

    async def refresh(self) -> None:
        """Fetch fresh metrics from every shim (before a scrape), in parallel, bounded."""
        links = list(self.links.values())

        async def one(link: ShimLink) -> None:
            try:
                await asyncio.wait_for(link.refresh(), REFRESH_TIMEOUT_S)
            except (OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - a dead shim
                log.debug("metrics refresh failed", extra={"shim": link.path,
                                                           "error": str(exc)})

        await asyncio.gather(*(one(link) for link in links))
