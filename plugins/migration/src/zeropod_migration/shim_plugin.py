"""Shim side of ``zeropod-migration`` (entry point group ``zeropod.shim``): standard library
and zeropod_core only — the shim never imports gRPC, TLS or compression code.

* Source node: before and after each checkpoint of a container listed in
  ``zeropod.ctrox.dev/migrate`` or ``live-migrate``,
  record where its overlay upper dir is (``source.json``), so the manager's image service can
  stream the container's files with its image. When a cold-migrating container is deleted
  while it sleeps, hand its image (and files) over to the manager instead of letting them go
  (:mod:`.handover`).
* Target node: :class:`IncomingMigrator` asks the node's manager at ``Create`` (its node API
  socket, :mod:`.nodeapi`) to find, claim and fetch the pod's migration; then tells the core
  that the container starts asleep from the image the manager put in place
  (``snapshot/zeropod-migration.json``), and puts the files that travelled
  (``snapshot/upper``) into the new rootfs's upper dir. With ``snapshot/zeropod-live.json``
  (a live migration, announced by the manager under ``.live/``) the core restores it at once
  instead, and the criu plugin fetches its pages from the source.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from zeropod_core import hookimpl
from zeropod_core.config import manager_socket_path, parse_bool, parse_names
from zeropod_core.model import ContainerInfo, Outcome
from zeropod_core.providers import IncomingImage

from .annotations import (
    DISABLE_MIGRATE_DATA,
    INCOMING_FILE,
    LIVE_FILE,
    LIVE_MIGRATE,
    LIVE_PENDING,
    MIGRATE,
    UPPER,
    IncomingInfo,
    SourceInfo,
    live_key,
    wants_migration,
)
from .handover import hand_over
from .nodeapi import ask_manager
from .overlay import move_into, upper_dir

log = logging.getLogger("zeropod.migration.shim")

_image_root = Path(os.environ.get("ZEROPOD_IMAGE_ROOT") or "/var/lib/zeropod/i")
_manager_socket = manager_socket_path(os.environ)
# how long Create waits for a live arrival the target manager announced
_live_wait_s = 30.0
LIVE_POLL_S = 0.002
# how long a stop waits for the manager's live hand-over (claim timeout + the move)
_departure_wait_s = 600.0
# container id -> whether its files travel (only containers listed in the migrate annotation)
_migrating: dict[str, bool] = {}
# containers listed in the live-migrate annotation
_live: set[str] = set()
# containers of _migrating that sleep with a complete image (checkpointed, not woken since)
_asleep: set[str] = set()


def _names(container: ContainerInfo) -> tuple[str, ...]:
    return tuple(n for n in (container.container_name, container.id) if n)


@hookimpl
def zeropod_register_annotations(
    register: Callable[[str, Callable[[str], object], str | None, str], None],
) -> None:
    register(MIGRATE, parse_names, None,
             "comma-separated containers that move to the replacement pod on another node "
             "while scaled down (their checkpoint image travels; they are not started)")
    register(LIVE_MIGRATE, parse_names, None,
             "the running container that moves live to the replacement pod (lazy pages: it "
             "is frozen only while its small image travels; one container per pod)")
    register(DISABLE_MIGRATE_DATA, parse_bool, "false",
             "true: the files a migrating container wrote stay on the old node")


@hookimpl
def zeropod_configure(settings: Mapping[str, str]) -> None:
    global _image_root, _live_wait_s, _manager_socket
    root = settings.get("ZEROPOD_IMAGE_ROOT", "").strip()
    if root and os.path.isabs(root):
        _image_root = Path(root)
    _manager_socket = manager_socket_path(settings)
    wait = settings.get("ZEROPOD_LIVE_WAIT", "").strip()
    try:
        _live_wait_s = float(wait) if wait else _live_wait_s
    except ValueError:
        log.error("ZEROPOD_LIVE_WAIT must be seconds, got %r; using %.0f", wait, _live_wait_s)


def _migrates(container: ContainerInfo, config: Mapping[str, object]) -> bool:
    names = _names(container)
    return wants_migration(config.get(MIGRATE), names) or \
        wants_migration(config.get(LIVE_MIGRATE), names)


@hookimpl
def zeropod_container_created(container: ContainerInfo, config: Mapping[str, object]) -> None:
    if _migrates(container, config):
        _migrating[container.id] = not config.get(DISABLE_MIGRATE_DATA)
    if wants_migration(config.get(LIVE_MIGRATE), _names(container)):
        _live.add(container.id)


@hookimpl
def zeropod_container_deleted(container: ContainerInfo) -> None:
    _migrating.pop(container.id, None)
    _live.discard(container.id)
    _asleep.discard(container.id)


@hookimpl
def zeropod_stopping_asleep(container: ContainerInfo) -> None:
    """A sleeping migrating container's image goes to the manager (source side), before the
    checkpointer discards it; only where a manager serves the node API (the migration
    controller), which publishes the image and removes it again."""
    migrate_data = _migrating.get(container.id)
    if migrate_data is None or container.id not in _asleep:
        return
    _asleep.discard(container.id)
    if not os.path.exists(_manager_socket):
        # no migration controller on this node: nobody would publish or remove the image
        return
    upper = upper_dir(Path(container.bundle) / "rootfs") if migrate_data else None
    try:
        folder = hand_over(_image_root, container.id, container.container_name,
                           container.pod_name, container.pod_namespace, upper)
    except OSError as exc:
        log.error("handing the image over to the manager failed; it goes with the container",
                  extra={"container": container.id, "error": str(exc)})
        return
    if folder is not None:
        log.info("image handed over to the manager", extra={
            "container": container.id, "folder": str(folder), "files": upper is not None})


@hookimpl
def zeropod_stopping_running(container: ContainerInfo) -> Awaitable[None] | None:
    """A running live-migrating container is being stopped (its pod is deleted, say): hold
    the stop while the node's manager moves it to the replacement pod's node (source side).
    The manager answers once the move ended, or at once when there is none; the app is gone
    after a move, and the container then ends as a sleeping one."""
    if (container.id not in _live or not container.pod_name
            or not os.path.exists(_manager_socket)):
        return None
    return _departure(container)


async def _departure(container: ContainerInfo) -> None:
    started = time.monotonic()
    answer = await ask_manager(_manager_socket, {
        "stage": "departure", "container_id": container.id,
        "container_name": container.container_name, "pod_name": container.pod_name,
        "pod_namespace": container.pod_namespace}, timeout_s=_departure_wait_s)
    log.info("the manager's answer about a live departure", extra={
        "container": container.id, "held_s": round(time.monotonic() - started, 3), **answer})


@hookimpl
def zeropod_before_restore(container: ContainerInfo) -> None:
    _asleep.discard(container.id)


@hookimpl
def zeropod_before_checkpoint(container: ContainerInfo) -> None:
    """Before a live dump, tell the manager where the container's files are: the target
    pulls them while the dump still serves pages (source side)."""
    if container.id in _live and container.id in _migrating:
        _record_source(container)


@hookimpl
def zeropod_after_checkpoint(container: ContainerInfo, outcome: Outcome) -> None:
    """Tell the manager where the checkpointed container's files are (source side)."""
    if outcome.ok and container.id in _migrating:
        _record_source(container)
        _asleep.add(container.id)


def _record_source(container: ContainerInfo) -> None:
    upper = upper_dir(Path(container.bundle) / "rootfs")
    if upper is None:
        log.info("the container's rootfs is not an overlay: its files cannot travel",
                 extra={"container": container.id})
    base = _image_root / container.id
    if base.is_dir():
        SourceInfo(upper_dir=str(upper or ""),
                   migrate_data=_migrating[container.id] and upper is not None).save(base)


class IncomingMigrator:
    """Answers the core's "does this container arrive asleep from another node?"."""

    def __init__(self, container: ContainerInfo, image_root: Path, *,
                 live: bool = False, manager_socket: str = "") -> None:
        self.container = container
        self.snapshot = image_root / container.id / "snapshot"
        self.manager_socket = manager_socket
        info = container
        self.pending = image_root / LIVE_PENDING / live_key(
            info.pod_namespace, info.pod_name, info.container_name, info.id) if live else None

    async def incoming(self) -> IncomingImage | None:
        info = self.container
        if self.pending is not None and _arrival(self.pending) != "gone":
            await self._wait_live(self.pending)
        elif (self.manager_socket and info.pod_name
                and not (self.snapshot / INCOMING_FILE).exists()):
            # the manager finds and claims the pod's Migration and puts the image in place
            # (cold), or announces a live arrival it then receives
            answer = await ask_manager(self.manager_socket, {
                "stage": "arrival", "container_id": info.id,
                "container_name": info.container_name, "pod_name": info.pod_name,
                "pod_namespace": info.pod_namespace})
            log.info("the manager's answer about an incoming migration",
                     extra={"container": info.id, **answer})
            if answer.get("live") and self.pending is not None \
                    and _arrival(self.pending) != "gone":
                await self._wait_live(self.pending)
        image = await asyncio.to_thread(self._incoming)
        if image is not None and not image.wake:
            _asleep.add(info.id)
        return image

    async def _wait_live(self, pending: Path) -> None:
        """The target manager expects a live arrival for this container: wait (bounded)
        until its image is complete, then take it into this container's folder. (A stat
        every 2 ms on the loop: cheaper than a thread hop each time.)"""
        deadline = time.monotonic() + _live_wait_s
        while (state := _arrival(pending)) == "waiting":
            if time.monotonic() > deadline:
                log.warning("no live image within %.0f s: starting fresh", _live_wait_s,
                            extra={"container": self.container.id, "pending": str(pending)})
                return
            await asyncio.sleep(LIVE_POLL_S)
        if state == "gone":
            log.info("the live arrival was called off: starting fresh",
                     extra={"container": self.container.id})
            return
        await asyncio.to_thread(_take_arrival, pending, self.snapshot)

    def _incoming(self) -> IncomingImage | None:
        info = IncomingInfo.load(self.snapshot)
        if info is None:
            return None
        if not (self.snapshot / "inventory.img").is_file():
            log.warning("a migrated image without CRIU's inventory: starting fresh",
                        extra={"container": self.container.id, "source": info.source})
            shutil.rmtree(self.snapshot, ignore_errors=True)
            return None
        files = self.snapshot / UPPER
        if files.is_dir():
            upper = upper_dir(Path(self.container.bundle) / "rootfs")
            if upper is None:
                log.warning("the container's rootfs is not an overlay: its files from the "
                            "other node are dropped", extra={"container": self.container.id})
            else:
                moved = move_into(files, upper)
                log.info("files of the migrated container in place",
                         extra={"container": self.container.id, "entries": moved})
            shutil.rmtree(files, ignore_errors=True)
        (self.snapshot / INCOMING_FILE).unlink(missing_ok=True)  # one-shot
        # live: the criu plugin restores at once, fetching pages from the source
        return IncomingImage(ports=info.ports, source=info.source,
                             wake=(self.snapshot / LIVE_FILE).is_file())


def _arrival(pending: Path) -> str:
    """"arrived" (the image is complete), "waiting", or "gone" (called off)."""
    if (pending / "snapshot" / INCOMING_FILE).is_file():
        return "arrived"
    return "waiting" if pending.is_dir() else "gone"


def _take_arrival(pending: Path, snapshot: Path) -> None:
    snapshot.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    (pending / "snapshot").rename(snapshot)
    shutil.rmtree(pending, ignore_errors=True)


@hookimpl
def zeropod_make_migrator(container: ContainerInfo,
                          config: Mapping[str, object]) -> IncomingMigrator | None:
    """A migrator for containers listed in ``zeropod.ctrox.dev/migrate`` or
    ``zeropod.ctrox.dev/live-migrate``."""
    if container.sandbox or not _migrates(container, config):
        return None
    return IncomingMigrator(container, _image_root,
                            live=wants_migration(config.get(LIVE_MIGRATE), _names(container)),
                            manager_socket=_manager_socket)
