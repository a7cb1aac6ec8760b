"""The manager's Kubernetes side of cold migration (upstream's pod and migration controllers).

Source node (the pod's node):

* A pod of this node gets a ``deletionTimestamp`` and has ``zeropod.ctrox.dev/migrate`` and
  a ``pod-template-hash`` (a Deployment's pod): a ``Migration`` named after the pod is made,
  owned by the pod's ReplicaSet, with the clean-up finalizer. Each listed container is
  ``Pending`` when it sleeps, ``Failed`` at once when it runs (a running container cannot
  move cold).
* The shim hands the sleeping container's image over when the kubelet stops the container
  (:mod:`.handover`); the controller then publishes this node's image service as the
  container's ``imageServer`` and sets ``Running`` with ``pausedAt``.
* Nobody claimed the ``Migration`` within the claim timeout: ``Unclaimed``.
* A container in a final phase (``Completed``/``Failed``/``Unclaimed``), or a ``Migration``
  being deleted (it is garbage-collected with its owner), loses its handed-over image;
  then the finalizer is removed. A handed-over image no ``Migration`` asks for is removed
  after the claim timeout.

Target node: a new container of a migrating pod asks over the node API (:meth:`node_api`);
the controller finds the pod's ``Migration`` by namespace and ``pod-template-hash``, claims
it (``targetNode``, ``targetPod``, the owner reference moved to the new pod), waits for the
source's image, renames it (same node) or pulls it over mutual TLS, and answers. Every
failure is written into the ``Migration`` (``Failed`` with the reason) and answered as "no
image": the container then starts fresh.

All API calls are blocking client calls made in worker threads; the event loop only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zeropod_core.config import parse_names
from zeropod_core.manager.kube import KubeApi, KubeError
from zeropod_core.providers import NodeView

from .annotations import LIVE_MIGRATE, MIGRATE
from .capabilities import live_migration_support
from .crd import (
    CLEANUP_FINALIZER,
    GROUP,
    PLURAL,
    VERSION,
    ContainerMigrationStatus,
    Migration,
    MigrationContainer,
    MigrationSpec,
    Phase,
    Server,
)
from .handover import SNAPSHOT, HandOver, handover_root
from .imagefs import TransferError
from .live import LiveMigrationUnavailable
from .live_flow import LiveArrivals, LiveDepartures
from .livegate import LiveGates
from .receive import mark_received, receive_image
from .service import check_image_id
from .settings import MigrationSettings
from .tls import NodeCredentials
from .writer import MigrationWriter

log = logging.getLogger("zeropod.migration.controller")

TEMPLATE_HASH = "pod-template-hash"
POLL_S = 0.2
RETRY_S = 1.0


class _Lost(Exception):
    """Another pod claimed the Migration first."""


class _Final(TransferError):
    """The container's migration ended already (its reason stays as it is)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _age_s(obj: Mapping[str, Any]) -> float:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return 0.0
    stamp = datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    return (_now() - stamp).total_seconds()


@dataclass
class Counters:
    """What ``/healthz`` shows of the controller's work."""

    created: int = 0
    failed_running: int = 0
    published: int = 0
    unclaimed: int = 0
    claimed: int = 0
    received: int = 0
    failed: int = 0
    images_removed: int = 0


class MigrationController:
    """Implements :class:`~zeropod_core.providers.MigrationController`."""

    def __init__(self, kube: KubeApi, node: NodeView, config: MigrationSettings,
                 creds: NodeCredentials | None, port: Callable[[], int], ca: str,
                 gates: LiveGates | None = None) -> None:
        self.kube, self.node, self.config, self.creds = kube, node, config, creds
        self.writer = MigrationWriter(kube)
        self.departures = LiveDepartures(self.writer, node, config, creds, port, gates)
        self.arrivals = LiveArrivals(self.writer, node, config, creds)
        self.node_name = kube.node_name
        self._port, self.ca = port, ca
        self.hold = handover_root(config.image_root)
        self.counters = Counters()
        self._pods_seen: dict[str, asyncio.Task[None]] = {}  # deleted pods' uids, handled
        self._mine: dict[tuple[str, str], Migration] = {}  # Migrations whose source is here
        self._published: set[str] = set()  # source container ids published
        self._problem = ""

    # --- the provider interface ------------------------------------------------------------

    def health(self) -> Mapping[str, Any]:
        return {"node": self.node_name, "ca": self.ca, "image_server": self._server_text(),
                "handover_folder": str(self.hold), **dataclasses.asdict(self.counters),
                "live": {**live_migration_support(),  # read now: sysctls change
                         "handed_over": self.departures.handed_over,
                         "departures_failed": self.departures.failed,
                         "bytes_moved": self.departures.bytes_moved,
                         "received": self.arrivals.received,
                         "arrivals_failed": self.arrivals.failed},
                **({"problem": self._problem} if self._problem else {})}

    async def run(self) -> None:
        await asyncio.gather(
            self._follow("pods", lambda: self.kube.list_pods(
                field_selector=f"spec.nodeName={self.node_name}"),
                lambda rv: self.kube.watch_pods(
                    rv, field_selector=f"spec.nodeName={self.node_name}"), self._on_pod),
            self._follow("migrations", lambda: self.kube.list_custom(GROUP, VERSION, PLURAL),
                         lambda rv: self.kube.watch_custom(GROUP, VERSION, PLURAL, rv),
                         self._on_migration),
            self._housekeeping())

    async def node_api(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        """A shim's question: ``stage`` "arrival" (default: a new container asks whether it
        arrives from a migration) or "departure" (a running live-migrating container is
        being stopped: answered once it moved, or at once when it does not)."""
        stage = request.get("stage", "arrival")
        if stage not in ("arrival", "departure"):
            raise ValueError(f"stage must be 'arrival' or 'departure', got {stage!r}")
        fields = {}
        for key in ("container_id", "container_name", "pod_name", "pod_namespace"):
            value = request.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a non-empty string")
            fields[key] = value
        check_image_id(fields["container_id"])
        started = time.monotonic()
        try:
            answer = await (self._departure(**fields) if stage == "departure"
                            else self._incoming(**fields))
        except KubeError as exc:
            answer = {"image": False, "handed_over": False,
                      "reason": f"Kubernetes API: {exc}"}
        answer["seconds"] = round(time.monotonic() - started, 3)
        return answer

    # --- watching ----------------------------------------------------------------------------

    async def _follow(self, what: str, lister: Callable[[], dict[str, Any]],
                      watcher: Callable[[str], Iterator[dict[str, Any]]],
                      handle: Callable[[str, dict[str, Any]], Any]) -> None:
        """List, then watch from the list's version; list again after an error or 410."""
        while True:
            try:
                listed = await asyncio.to_thread(lister)
                self._problem = ""
                for item in listed.get("items") or ():
                    await handle("ADDED", item)
                version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
                while True:
                    async for event in _iterate(watcher(version)):
                        obj = event["object"]
                        version = str((obj.get("metadata") or {}).get("resourceVersion",
                                                                      version))
                        await handle(str(event["type"]), obj)
            except KubeError as exc:
                self._problem = f"watching {what}: {exc}"
                level = logging.DEBUG if exc.status == 410 else logging.WARNING
                log.log(level, "watch ended, listing again", extra={"what": what,
                                                                   "error": str(exc)})
                await asyncio.sleep(0 if exc.status == 410 else RETRY_S)
            except Exception:  # a bug in a handler must not stop the controller
                log.exception("migration controller handler failed", extra={"what": what})
                await asyncio.sleep(RETRY_S)

    # --- source side -----------------------------------------------------------------------

    async def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        """A deleted migrating pod is handled once (its uid); a second caller (the watch and
        a held Kill's departure) waits for the first."""
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        uid = str(meta.get("uid", ""))
        if kind == "DELETED":
            self._pods_seen.pop(uid, None)
            return
        if not meta.get("deletionTimestamp") or not (
                annotations.get(MIGRATE) or annotations.get(LIVE_MIGRATE)):
            return
        work = self._pods_seen.get(uid)
        if work is None:
            work = asyncio.get_running_loop().create_task(self._migrate_pod(pod),
                                                          name=f"migrate-pod-{uid}")
            self._pods_seen[uid] = work
        await asyncio.shield(work)

    async def _migrate_pod(self, pod: dict[str, Any]) -> None:
        """The deleted pod's ``Migration``: sleeping containers move cold, a running one
        listed in live-migrate moves live, any other listed one fails at once."""
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        name, namespace = str(meta["name"]), str(meta.get("namespace", "default"))
        template_hash = (meta.get("labels") or {}).get(TEMPLATE_HASH)
        if not template_hash:
            log.info("a deleted pod with the migrate annotation is not a Deployment's pod "
                     "(no pod-template-hash): not migrated", extra={"pod": f"{namespace}/{name}"})
            return
        cold = parse_names(annotations.get(MIGRATE) or "")
        live = parse_names(annotations.get(LIVE_MIGRATE) or "")
        ids = {str(s.get("name")): str(s.get("containerID") or "").rpartition("://")[2]
               for s in (pod.get("status") or {}).get("containerStatuses") or ()}
        refresh = getattr(self.node, "refresh", None)  # the manager's live view has it
        if refresh is not None and any(i not in {c.id for c in self.node.containers()}
                                       for i in ids.values()):
            await refresh()  # a container started since its shim's last event
        phases = {c.id: c.phase for c in self.node.containers()}
        containers, statuses, departing = [], [], []
        for spec in (pod.get("spec") or {}).get("containers") or ():
            cname = str(spec.get("name"))
            if cname not in cold | live or not ids.get(cname):
                continue
            containers.append(MigrationContainer(cname, ids[cname]))
            phase = phases.get(ids[cname])
            if phase == "SCALED_DOWN":
                statuses.append(ContainerMigrationStatus(cname))
            elif phase == "RUNNING" and cname in live:
                statuses.append(ContainerMigrationStatus(cname))
                departing.append(containers[-1])
            else:
                self.counters.failed_running += 1
                statuses.append(ContainerMigrationStatus(
                    cname, Phase.FAILED, f"the container is {phase or 'not a zeropod container'}"
                    ": only a scaled-down container can be migrated cold"))
        if not containers:
            return
        # Owned by the pod's ReplicaSet until a pod claims it: the source pod object may be
        # gone long before the replacement's container is created.
        owners = tuple({k: o[k] for k in ("apiVersion", "kind", "name", "uid")}
                       for o in meta.get("ownerReferences") or () if o.get("controller"))
        migration = Migration(
            name=name, namespace=namespace,
            spec=MigrationSpec(source_node=self.node_name, pod_template_hash=template_hash,
                               containers=tuple(containers), source_pod=name,
                               live_migration=bool(departing)),
            owner_references=owners)
        try:
            created = Migration.from_json(await self.writer.call(
                self.kube.create_custom, GROUP, VERSION, PLURAL, migration.to_json()))
        except KubeError as exc:
            log.error("creating the Migration failed; the pod is not migrated",
                      extra={"pod": f"{namespace}/{name}", "error": str(exc)})
            return
        self.counters.created += 1
        # read-edit-write: the garbage collector may touch it at once (a ReplicaSet being
        # deleted), and a conflict must not lose the Migration's phases
        written = await self.writer.update(namespace, name, lambda current: replace(
            current, status=tuple(statuses)), status=True)
        migration = written or replace(created, status=tuple(statuses))
        self._mine[(namespace, name)] = migration
        log.info("migration created", extra={
            "migration": f"{namespace}/{name}", "template_hash": template_hash,
            "containers": {s.name: s.phase.value for s in statuses},
            "live": [c.name for c in departing]})
        for container in departing:
            self.departures.start(migration, container)
        await self._publish_handed_over()

    async def _on_migration(self, kind: str, obj: dict[str, Any]) -> None:
        try:
            migration = Migration.from_json(obj)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed Migration", extra={"error": str(exc)})
            return
        if migration.spec.source_node != self.node_name:
            return
        key = (migration.namespace, migration.name)
        if kind == "DELETED":
            self._mine.pop(key, None)
            self._published.difference_update(c.id for c in migration.spec.containers)
            self._remove_images(migration, all_containers=True)
            return
        self._mine[key] = migration
        self.departures.on_migration(migration)
        if migration.extra_metadata.get("deletionTimestamp"):
            self._remove_images(migration, all_containers=True)
            if CLEANUP_FINALIZER in migration.finalizers:
                await self.writer.update(*key, lambda m: replace(m, finalizers=tuple(
                    f for f in m.finalizers if f != CLEANUP_FINALIZER)))
                log.info("migration cleaned up", extra={"migration": f"{key[0]}/{key[1]}"})
            return
        self._remove_images(migration, all_containers=False)
        await self._publish_handed_over()

    def _remove_images(self, migration: Migration, *, all_containers: bool) -> None:
        final = {s.name for s in migration.status if s.phase.final}
        for container in migration.spec.containers:
            if not all_containers and container.name not in final:
                continue
            folder = self.hold / container.id
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                self.counters.images_removed += 1
                log.info("handed-over image removed", extra={
                    "migration": f"{migration.namespace}/{migration.name}",
                    "container": container.name, "id": container.id})

    def _server_text(self) -> str:
        port = self._port()
        return Server(self.config.advertise, port).address if port else "not serving"

    async def _publish_handed_over(self) -> None:
        """Publish every handed-over image a Pending container of a Migration waits for."""
        for migration in list(self._mine.values()):
            statuses = {s.name: s for s in migration.status}
            for container in migration.spec.containers:
                status = statuses.get(container.name)
                if (container.id in self._published or status is None
                        or status.phase is not Phase.PENDING):
                    continue
                record = HandOver.load(self.hold / container.id)
                if record is None:
                    continue
                self._published.add(container.id)
                await self._publish(migration, container, record)

    async def _publish(self, migration: Migration, container: MigrationContainer,
                       record: HandOver) -> None:
        port = self._port()
        if not port:
            await self.writer.set_phase(migration, container.name, Phase.FAILED,
                                        "the source node's image service is not running")
            return
        server = Server(self.config.advertise, port)
        await self.writer.set_servers(migration, container.name, server)
        paused = datetime.datetime.fromtimestamp(record.handed_over_at, datetime.UTC)
        await self.writer.set_phase(migration, container.name, Phase.RUNNING, paused_at=paused)
        self.counters.published += 1
        log.info("image published", extra={"migration": f"{migration.namespace}/"
                                                        f"{migration.name}",
                                           "container": container.name,
                                           "image_server": server.address})

    async def _housekeeping(self) -> None:
        """Hand-overs to publish, claim timeouts, handed-over images nobody wants."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._publish_handed_over()
                await self._claim_timeouts()
                await asyncio.to_thread(self._orphans)
            except KubeError as exc:
                log.warning("migration housekeeping failed", extra={"error": str(exc)})
            except Exception:
                log.exception("migration housekeeping failed")

    async def _claim_timeouts(self) -> None:
        for migration in list(self._mine.values()):
            if migration.claimed or migration.extra_metadata.get("deletionTimestamp"):
                continue
            if (_age_s({"metadata": migration.extra_metadata}) < self.config.claim_timeout_s
                    or all(s.phase.final for s in migration.status)):
                continue
            for status in migration.status:
                if not status.phase.final:
                    await self.writer.set_phase(migration, status.name, Phase.UNCLAIMED,
                                                f"no pod claimed it within "
                                                f"{self.config.claim_timeout_s:g} s")
            self.counters.unclaimed += 1
            self._mine[(migration.namespace, migration.name)] = replace(
                migration, status=tuple(replace(s, phase=Phase.UNCLAIMED) if not s.phase.final
                                        else s for s in migration.status))

    def _orphans(self) -> None:
        try:
            folders = list(self.hold.iterdir())
        except OSError:
            return
        wanted = {c.id for m in self._mine.values() for c in m.spec.containers}
        for folder in folders:
            record = HandOver.load(folder)
            age = time.time() - (record.handed_over_at if record else folder.stat().st_mtime)
            if folder.name not in wanted and age > self.config.claim_timeout_s:
                shutil.rmtree(folder, ignore_errors=True)
                self.counters.images_removed += 1
                log.info("removed a handed-over image no Migration asked for",
                         extra={"id": folder.name, "age_s": round(age, 1)})

    # --- target side -----------------------------------------------------------------------

    async def _incoming(self, container_id: str, container_name: str, pod_name: str,
                        pod_namespace: str) -> dict[str, Any]:
        try:
            pod = await self.writer.call(self.kube.get_pod, pod_namespace, pod_name)
        except KubeError as exc:
            return {"image": False, "reason": f"reading the pod failed: {exc}"}
        meta = pod.get("metadata") or {}
        template_hash = (meta.get("labels") or {}).get(TEMPLATE_HASH)
        if not template_hash:
            return {"image": False, "reason": "not a Deployment's pod (no pod-template-hash)"}
        deadline = time.monotonic() + self.config.find_timeout_s
        while True:
            migration = await self._find(pod_namespace, pod_name, template_hash,
                                         container_name)
            if migration is not None:
                try:
                    if migration.spec.live_migration and migration.spec.target_pod != pod_name:
                        answer = await self._arrive_live(migration, container_id,
                                                         container_name, pod_namespace,
                                                         pod_name, str(meta.get("uid")))
                        if answer is not None:
                            return answer
                    migration = await self._claim(migration, pod_name, str(meta.get("uid")))
                    break
                except _Lost:
                    continue
            if time.monotonic() > deadline:
                return {"image": False, "reason": "no Migration to claim"}
            await asyncio.sleep(POLL_S)
        ref = f"{migration.namespace}/{migration.name}"
        source = next(c for c in migration.spec.containers if c.name == container_name)
        try:
            received = await self._receive(migration, source, container_id)
        except (TransferError, OSError, ValueError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            self.counters.failed += 1
            log.warning("migration failed; the container starts fresh", extra={
                "migration": ref, "container": container_name, "reason": reason})
            if not isinstance(exc, _Final):
                with contextlib.suppress(KubeError):
                    await self.writer.set_phase(migration, container_name, Phase.FAILED,
                                                reason)
            return {"image": False, "migration": ref, "reason": reason}
        self.counters.received += 1
        await self.writer.set_phase(migration, container_name, Phase.COMPLETED,
                                    restored_at=_now())
        return {"image": True, "migration": ref, **received}

    async def _arrive_live(self, migration: Migration, container_id: str,
                           container_name: str, pod_namespace: str, pod_name: str,
                           pod_uid: str) -> dict[str, Any] | None:
        """A live Migration: once the source offered the container (image and page server),
        get ready here, announce the arrival, then claim (the source dumps at the claim) and
        receive in the background; the answer tells the shim to wait for the image. None:
        the container moves cold after all (it slept when its pod was deleted)."""
        ref = f"{migration.namespace}/{migration.name}"
        try:
            current, source = await self._offered(
                migration, container_name, time.monotonic() + self.config.image_timeout_s)
        except (TransferError, TimeoutError) as exc:
            return {"image": False, "migration": ref, "reason": str(exc)}
        if source.page_server is None:
            return None  # handed over asleep: the cold path
        try:
            arrival = await self.arrivals.prepare(current, source, pod_namespace, pod_name)
        except (LiveMigrationUnavailable, TransferError, OSError) as exc:
            # refused up front, without a claim (the source dumps at a claim): the final
            # phase tells the source to stop waiting
            reason = str(exc) or type(exc).__name__
            await self.writer.set_phase(current, container_name, Phase.FAILED,
                                        f"the target node refused: {reason}",
                                        unless_final=True)
            self.counters.failed += 1
            return {"image": False, "migration": ref, "reason": reason}
        try:
            claimed = await self._claim(current, pod_name, pod_uid)
        except BaseException:
            await arrival.close()
            raise
        self.arrivals.receive(arrival, claimed, source, container_id)
        return {"image": False, "live": True, "migration": ref}

    async def _departure(self, container_id: str, container_name: str, pod_name: str,
                         pod_namespace: str) -> dict[str, Any]:
        """Answer a held Kill of a running live-migrating container once its departure
        ended; the pod's deletion may not have reached the watch yet, so read it here."""
        if not self.departures.known(container_id):
            try:
                pod = await self.writer.call(self.kube.get_pod, pod_namespace, pod_name)
            except KubeError as exc:
                if exc.status != 404:
                    raise
            else:
                await self._on_pod("MODIFIED", pod)
        return await self.departures.wait(container_id)

    async def _find(self, namespace: str, pod_name: str, template_hash: str,
                    container_name: str) -> Migration | None:
        listed = await self.writer.call(self.kube.list_custom, GROUP, VERSION, PLURAL)
        candidates = []
        for item in listed.get("items") or ():
            try:
                migration = Migration.from_json(item)
            except (ValueError, KeyError, TypeError):
                continue
            spec = migration.spec
            if (migration.namespace != namespace or spec.pod_template_hash != template_hash
                    or spec.source_pod == pod_name
                    or migration.extra_metadata.get("deletionTimestamp")
                    or container_name not in {c.name for c in spec.containers}):
                continue
            if spec.target_pod == pod_name and spec.target_node == self.node_name:
                return migration  # this pod claimed it already (for another container)
            if not migration.claimed:
                candidates.append((str(migration.extra_metadata.get("creationTimestamp", "")),
                                   migration))
        return min(candidates, key=lambda c: c[0])[1] if candidates else None

    async def _claim(self, migration: Migration, pod_name: str, pod_uid: str) -> Migration:
        if migration.spec.target_pod == pod_name:
            return migration

        def edit(current: Migration) -> Migration:
            if current.claimed and current.spec.target_pod != pod_name:
                raise _Lost()
            owner = {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}
            return replace(current, owner_references=(owner,), spec=replace(
                current.spec, target_node=self.node_name, target_pod=pod_name))

        claimed = await self.writer.update(migration.namespace, migration.name, edit)
        if claimed is None:
            raise _Lost()
        self.counters.claimed += 1
        log.info("migration claimed", extra={"migration": f"{migration.namespace}/"
                                                          f"{migration.name}",
                                             "pod": pod_name, "node": self.node_name})
        return claimed

    async def _offered(self, migration: Migration, container: str,
                       deadline: float) -> tuple[Migration, MigrationContainer]:
        """The Migration once the source published ``container``'s image server (a sleeping
        container's hand-over, or a running one's live offer) before ``deadline``
        (``time.monotonic()``). Raises TransferError (the Migration is gone), _Final (its
        migration ended) or TimeoutError."""
        while True:
            current = await self.writer.get(migration.namespace, migration.name)
            if current is None:
                raise TransferError("the Migration was deleted")
            source = next(c for c in current.spec.containers if c.name == container)
            status = next((s for s in current.status if s.name == container), None)
            if status is not None and status.phase.final:
                raise _Final(f"the migration is {status.phase.value}"
                             + (f": {status.reason}" if status.reason else ""))
            if source.image_server is not None:
                return current, source
            if time.monotonic() > deadline:
                raise TimeoutError(f"the source did not hand the image over within "
                                   f"{self.config.image_timeout_s:g} s")
            await asyncio.sleep(POLL_S)

    async def _receive(self, migration: Migration, container: MigrationContainer,
                       target_id: str) -> dict[str, Any]:
        """Wait for the source's image, then rename (same node) or pull it."""
        deadline = time.monotonic() + self.config.image_timeout_s
        current, source = await self._offered(migration, container.name, deadline)
        image_root = self.config.image_root
        if current.spec.source_node == self.node_name:
            held = self.hold / source.id / SNAPSHOT
            if not (held / "inventory.img").is_file():
                raise TransferError(f"no handed-over image of {source.id} in {held}")
            snapshot = image_root / check_image_id(target_id) / SNAPSHOT
            await asyncio.to_thread(_adopt, held, snapshot)
            ready = await asyncio.to_thread(mark_received, snapshot, f"local/{source.id}",
                                            None)
            return {"ports": list(ready.ports), "source": f"local/{source.id}", "bytes": 0,
                    "wire_bytes": 0}
        if self.creds is None:
            raise TransferError("this node has no migration credentials")
        assert source.image_server is not None  # what _offered waited for
        remaining = max(1.0, deadline - time.monotonic())
        received = await receive_image(
            source.image_server.address, self.creds, source.id, image_root, target_id,
            source_label=f"{current.spec.source_node}/{source.id}", timeout_s=remaining)
        pull = received.pull
        return {"ports": list(received.ports),
                "source": f"{current.spec.source_node}/{source.id}",
                "bytes": pull.raw_bytes if pull else 0,
                "wire_bytes": pull.wire_bytes if pull else 0,
                "pull_seconds": round(pull.seconds, 3) if pull else 0}


def _adopt(held: Path, snapshot: Path) -> None:
    snapshot.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    held.rename(snapshot)
    shutil.rmtree(held.parent, ignore_errors=True)


async def _iterate(events: Iterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """A blocking iterator's items, each fetched in a worker thread."""
    while True:
        event = await asyncio.to_thread(next, events, None)
        if event is None:
            return
        yield event
