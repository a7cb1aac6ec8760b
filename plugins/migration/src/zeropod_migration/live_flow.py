"""Live migration driven by Kubernetes: the managers' part of a ``Migration`` that moves a
running container (``zeropod.ctrox.dev/live-migrate``) to its replacement pod's node.

The mechanics are :mod:`.live` (the shims' lazy dump and restore, the page-server proxies);
this module runs them from the ``Migration`` object::

    source manager (LiveDeparture)             target manager (LiveArrival)
    the pod is deleted: Migration (liveMigration, Pending); the source shim holds the
    kubelet's Kill and asks its manager (departure), the app still runs
    SourceHandOver.prepare(): page-server
    proxy; spec imageServer + pageServer
                                               the replacement's container asks (arrival):
                                               both servers published -> TargetArrival.prepare()
                                               + expect(); then the claim; answers "live": the
                                               shim waits in Create for the image
    sees the claim: SourceHandOver.dump()      receive(): the pull waits at the source's image
    READY: the image service lets the pull go  service until READY (no API round trip in the
    (LiveGates); status Running + pausedAt     freeze), the shim restores at once
                                               the container runs: restoredAt
    finished(): every page left, the app is
    gone here: Completed; the held Kill ends
    the container as a sleeping one            sees the final phase: closes its proxy

Every failure before the app left makes the ``Migration`` ``Failed`` with the reason; the
app then runs on at the source until the held Kill stops it as usual, and the target
container starts fresh (its announced arrival is called off). Nobody claims within the
claim timeout: ``Unclaimed`` (the controller's housekeeping), and the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zeropod_core.manager.kube import KubeError
from zeropod_core.providers import NodeView

from .annotations import live_key
from .crd import Migration, MigrationContainer, Phase, Server
from .imagefs import TransferError
from .live import (
    LiveMigrationFailed,
    LiveMigrationUnavailable,
    SourceHandOver,
    TargetArrival,
)
from .livegate import LiveGates
from .settings import MigrationSettings
from .tls import NodeCredentials
from .writer import MigrationWriter

log = logging.getLogger("zeropod.migration.live")

POLL_S = 0.2
RUNNING_POLL_S = 0.005
# How long the target keeps its page-server proxy for pages still to come, at most.
PAGES_TIMEOUT_S = 330.0
# How long the target looks for its new container running after the image arrived.
RESTORE_TIMEOUT_S = 60.0


@dataclass
class _Departure:
    """One running container leaving this node."""

    migration: Migration
    container: MigrationContainer
    claimed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class LiveDepartures:
    """The source manager's live migrations, by source container id."""

    def __init__(self, writer: MigrationWriter, node: NodeView, config: MigrationSettings,
                 creds: NodeCredentials | None, port: Callable[[], int],
                 gates: LiveGates | None) -> None:
        self.writer, self.node, self.config, self.creds = writer, node, config, creds
        self._port, self.gates = port, gates
        self._active: dict[str, _Departure] = {}
        self.handed_over = 0
        self.failed = 0
        self.bytes_moved = 0  # page bytes sent to targets through the proxies

    def known(self, container_id: str) -> bool:
        return container_id in self._active

    def start(self, migration: Migration, container: MigrationContainer) -> None:
        """Begin the departure of ``container`` (running, listed in live-migrate)."""
        departure = _Departure(migration, container)
        self._active[container.id] = departure
        asyncio.get_running_loop().create_task(self._run(departure),
                                               name=f"live-departure-{container.id}")

    def on_migration(self, migration: Migration) -> None:
        """A new version of a Migration: a claim or a final phase wakes its departures."""
        statuses = {s.name: s for s in migration.status}
        for departure in self._active.values():
            if (departure.migration.namespace, departure.migration.name) != (
                    migration.namespace, migration.name):
                continue
            departure.migration = migration
            status = statuses.get(departure.container.name)
            if migration.spec.target_node or (status is not None and status.phase.final):
                departure.claimed.set()

    async def wait(self, container_id: str) -> dict[str, Any]:
        """The answer to the source shim holding the Kill: once the departure ended."""
        departure = self._active.get(container_id)
        if departure is None:
            return {"handed_over": False, "reason": "no live migration of this container"}
        reason = await asyncio.shield(departure.ended)
        return {"handed_over": not reason, **({"reason": reason} if reason else {}),
                "migration": f"{departure.migration.namespace}/{departure.migration.name}"}

    async def _run(self, departure: _Departure) -> None:
        container = departure.container
        reason = "the live migration did not start"
        try:
            reason = await self._depart(departure)
        except (KubeError, OSError) as exc:
            reason = f"live migration: {exc}"
        except Exception as exc:  # the held Kill must always be answered
            log.exception("live departure failed", extra={"container": container.id})
            reason = f"live migration: {exc!r}"
        finally:
            if reason:
                self.failed += 1
                with contextlib.suppress(KubeError, OSError):
                    await self.writer.set_phase(departure.migration, container.name,
                                                Phase.FAILED, reason, unless_final=True)
            else:
                self.handed_over += 1
            departure.ended.set_result(reason)
            # the Kill's answer is read at once; forget the departure a little later
            await asyncio.sleep(self.config.claim_timeout_s)
            self._active.pop(container.id, None)

    async def _depart(self, departure: _Departure) -> str:
        """The departure's steps; "" when the app moved, else why not."""
        migration, container = departure.migration, departure.container
        shim = next((c.shim for c in self.node.containers() if c.id == container.id), "")
        port = self._port()
        if not shim:
            return "the source manager does not see the container's shim"
        if self.creds is None or self.gates is None or not port:
            return "the source node's image service is not running"
        source = SourceHandOver(self.creds, shim, container.id)
        self.gates.open(container.id)
        try:
            try:
                pages_port = await source.prepare()
            except LiveMigrationUnavailable as exc:
                return str(exc)
            advertise = self.config.advertise
            await self.writer.set_servers(migration, container.name, Server(advertise, port),
                                          Server(advertise, pages_port))
            log.info("live migration offered", extra={
                "migration": f"{migration.namespace}/{migration.name}",
                "container": container.name, "page_server": f"{advertise}:{pages_port}"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(departure.claimed.wait(),
                                       self.config.claim_timeout_s + 5)
            # read again: the watch may have brought the claim before a final phase
            current = await self.writer.get(migration.namespace, migration.name)
            if current is None:
                return "the Migration was deleted"
            status = next((s for s in current.status if s.name == container.name), None)
            if status is not None and status.phase.final:
                return f"the migration is {status.phase.value}" + (
                    f": {status.reason}" if status.reason else "")
            if not current.spec.target_node:
                return f"no pod claimed it within {self.config.claim_timeout_s:g} s"
            try:
                paused = await source.dump()
            except LiveMigrationFailed as exc:
                self.gates.fail(container.id, str(exc))
                return str(exc)
            self.gates.ready(container.id)
            await self.writer.set_phase(
                migration, container.name, Phase.RUNNING,
                paused_at=datetime.datetime.fromtimestamp(paused.paused_at, datetime.UTC))
            try:
                held_s = await source.finished()
            except LiveMigrationFailed as exc:
                return str(exc)
            finally:
                self.bytes_moved += source.bytes_moved
            await self.writer.set_phase(migration, container.name, Phase.COMPLETED)
            log.info("live migration done at the source", extra={
                "migration": f"{migration.namespace}/{migration.name}",
                "container": container.name, "bytes_moved": source.bytes_moved,
                "held_s": round(held_s, 3), "image_bytes": paused.image_bytes})
            return ""
        finally:
            self.gates.close(container.id)
            await source.close()


class LiveArrivals:
    """The target manager's live migrations: the claim, then the image and the pages."""

    def __init__(self, writer: MigrationWriter, node: NodeView, config: MigrationSettings,
                 creds: NodeCredentials | None) -> None:
        self.writer, self.node, self.config, self.creds = writer, node, config, creds
        self.received = 0
        self.failed = 0

    async def prepare(self, migration: Migration, container: MigrationContainer,
                      pod_namespace: str, pod_name: str) -> TargetArrival:
        """Start the loopback proxy, open the image channel and announce the arrival under
        the name the target shim waits for (before the claim: the source dumps at the
        claim). Raises LiveMigrationUnavailable or TransferError."""
        assert container.image_server is not None and container.page_server is not None
        if self.creds is None:
            raise TransferError("this node has no migration credentials")
        arrival = TargetArrival(self.creds, (container.page_server.host,
                                             container.page_server.port))
        try:
            await arrival.prepare(container.image_server.address)
            arrival.expect(self.config.image_root,
                           live_key(pod_namespace, pod_name, container.name, ""))
        except BaseException:
            await arrival.close()
            raise
        return arrival

    def receive(self, arrival: TargetArrival, migration: Migration,
                container: MigrationContainer, target_id: str) -> None:
        """Pull the image (held at the source until its dump is ready), watch the container
        come up, then keep the proxy until the pages are over; in the background."""
        asyncio.get_running_loop().create_task(
            self._receive(arrival, migration, container, target_id),
            name=f"live-arrival-{target_id}")

    async def _receive(self, arrival: TargetArrival, migration: Migration,
                       container: MigrationContainer, target_id: str) -> None:
        ref = f"{migration.namespace}/{migration.name}"
        try:
            received = await arrival.receive(
                container.id, source_label=f"{migration.spec.source_node}/{container.id}")
            restored = await self._running_since(target_id)
            if restored is not None:
                await self.writer.set_restored(migration, container.name, restored)
            self.received += 1
            log.info("live migration arrived", extra={
                "migration": ref, "container": container.name, "id": target_id,
                "image_bytes": received.pull.raw_bytes if received.pull else 0,
                "restored": restored.isoformat() if restored else None})
            await self._until_final(migration, container.name)
        except (TransferError, OSError, TimeoutError, KubeError) as exc:
            self.failed += 1
            reason = str(exc) or type(exc).__name__
            log.warning("live migration failed on the target; the container starts fresh",
                        extra={"migration": ref, "container": container.name,
                               "reason": reason})
            with contextlib.suppress(KubeError, OSError):
                await self.writer.set_phase(migration, container.name, Phase.FAILED, reason,
                                            unless_final=True)
        finally:
            await arrival.close()

    async def _running_since(self, target_id: str) -> datetime.datetime | None:
        """When the new container ran restored: the shim's event of the restore (a RUNNING
        with a restore time) that this manager received."""
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        while time.monotonic() < deadline:
            for record in self.node.containers():
                if (record.id == target_id and record.phase == "RUNNING"
                        and record.last_restore_s is not None):
                    return datetime.datetime.fromtimestamp(record.since, datetime.UTC)
            await asyncio.sleep(RUNNING_POLL_S)
        log.warning("the arrived container was not seen running",
                    extra={"id": target_id, "timeout_s": RESTORE_TIMEOUT_S})
        return None

    async def _until_final(self, migration: Migration, container: str) -> None:
        """Keep the proxy until the source says every page left (or the migration ended
        otherwise, or the object is gone)."""
        deadline = time.monotonic() + PAGES_TIMEOUT_S
        while time.monotonic() < deadline:
            current = await self.writer.get(migration.namespace, migration.name)
            if current is None:
                return
            status = next((s for s in current.status if s.name == container), None)
            if status is not None and status.phase.final:
                return
            await asyncio.sleep(POLL_S)

