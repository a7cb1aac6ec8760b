"""Writes to ``Migration`` objects: read, edit, write, again on a conflict.

Both nodes write the same object (the source its servers, pausedAt and its phases, the
target its claim and restoredAt), so every write reads the current object first and a
conflicting write is retried. All API calls are blocking client calls made in worker
threads.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from zeropod_core.manager.kube import KubeApi, KubeError

from .crd import GROUP, PLURAL, VERSION, ContainerMigrationStatus, Migration, Phase, Server

log = logging.getLogger("zeropod.migration.controller")

CONFLICT_ATTEMPTS = 10


class MigrationWriter:
    """The controller's writes to ``Migration`` objects."""

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(function, *args, **kwargs)

    async def get(self, namespace: str, name: str) -> Migration | None:
        """The current object; None when it is gone."""
        return await self.update(namespace, name, lambda m: None)

    async def update(self, namespace: str, name: str,
                     edit: Callable[[Migration], Migration | None], *,
                     status: bool = False) -> Migration | None:
        """Read, edit, write (spec or status); again on a conflict. None: gone. ``edit``
        returning None writes nothing (the current object is returned)."""
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                current = Migration.from_json(await self.call(
                    self.kube.get_custom, GROUP, VERSION, PLURAL, namespace, name))
            except KubeError as exc:
                if exc.status == 404:
                    return None
                raise
            changed = edit(current)
            if changed is None:
                return current
            try:
                written = await self.call(self.kube.replace_custom, GROUP, VERSION, PLURAL,
                                          changed.to_json(), status=status)
            except KubeError as exc:
                if exc.conflict:
                    continue
                if exc.status == 404:
                    return None
                raise
            return Migration.from_json(written)
        raise KubeError(409, "Conflict", f"Migration {namespace}/{name}: still conflicting "
                                         f"after {CONFLICT_ATTEMPTS} attempts")

    async def set_phase(self, migration: Migration, container: str, phase: Phase,
                        reason: str = "", *, paused_at: datetime.datetime | None = None,
                        restored_at: datetime.datetime | None = None,
                        unless_final: bool = False) -> None:
        """Set ``container``'s phase (times kept unless given); ``unless_final`` leaves a
        container whose migration ended already as it is."""
        def edit(current: Migration) -> Migration | None:
            statuses = {s.name: s for s in current.status}
            old = statuses.get(container, ContainerMigrationStatus(container))
            if unless_final and old.phase.final:
                return None
            statuses[container] = replace(old, phase=phase, reason=reason,
                                          paused_at=paused_at or old.paused_at,
                                          restored_at=restored_at or old.restored_at)
            return replace(current, status=tuple(statuses.values()))

        await self.update(migration.namespace, migration.name, edit, status=True)
        log.info("migration phase", extra={"migration": f"{migration.namespace}/"
                                                        f"{migration.name}",
                                           "container": container, "phase": phase.value,
                                           "reason": reason})

    async def set_restored(self, migration: Migration, container: str,
                           restored_at: datetime.datetime) -> None:
        """Record when the container ran on the target; its phase stays as it is."""
        def edit(current: Migration) -> Migration:
            statuses = {s.name: s for s in current.status}
            old = statuses.get(container, ContainerMigrationStatus(container))
            statuses[container] = replace(old, restored_at=restored_at)
            return replace(current, status=tuple(statuses.values()))

        await self.update(migration.namespace, migration.name, edit, status=True)

    async def set_servers(self, migration: Migration, container: str, image: Server,
                          pages: Server | None = None) -> Migration | None:
        """Publish where the target pulls ``container``'s image (and fetches its pages)."""
        def edit(current: Migration) -> Migration:
            containers = tuple(replace(c, image_server=image, page_server=pages or
                                       c.page_server) if c.name == container else c
                               for c in current.spec.containers)
            return replace(current, spec=replace(current.spec, containers=containers))

        return await self.update(migration.namespace, migration.name, edit)
