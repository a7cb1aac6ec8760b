"""The ``Migration`` resource (``runtime.zeropod.ctrox.dev/v1``) as Python types.

The CRD is ``deploy/crds/migrations.runtime.zeropod.ctrox.dev.yaml``; field names and
meanings are upstream zeropod's, so both implementations read each other's objects. The
types convert to and from the JSON the API server stores (camelCase, absent = default);
fields this code does not know are ignored when reading.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field, replace
from typing import Any

GROUP = "runtime.zeropod.ctrox.dev"
VERSION = "v1"
PLURAL = "migrations"
KIND = "Migration"
API_VERSION = f"{GROUP}/{VERSION}"
# The source node removes its checkpoint images before it lets the object go.
CLEANUP_FINALIZER = "migration.runtime.zeropod.ctrox.dev/checkpoint-cleanup"


class Phase(enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    UNCLAIMED = "Unclaimed"

    @property
    def final(self) -> bool:
        return self in (Phase.COMPLETED, Phase.FAILED, Phase.UNCLAIMED)


@dataclass(frozen=True)
class Server:
    """A ``host:port`` the other node connects to (image service or page server)."""

    host: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Server | None:
        return cls(str(data["host"]), int(data["port"])) if data else None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MigrationContainer:
    """One container of the pod: its source id, and where its image and pages are served."""

    name: str
    id: str
    image_server: Server | None = None
    page_server: Server | None = None
    ports: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "id": self.id}
        if self.image_server:
            out["imageServer"] = self.image_server.to_json()
        if self.page_server:
            out["pageServer"] = self.page_server.to_json()
        if self.ports:
            out["ports"] = list(self.ports)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MigrationContainer:
        return cls(name=str(data["name"]), id=str(data["id"]),
                   image_server=Server.from_json(data.get("imageServer")),
                   page_server=Server.from_json(data.get("pageServer")),
                   ports=tuple(int(p) for p in data.get("ports") or ()))


@dataclass(frozen=True)
class MigrationSpec:
    source_node: str
    pod_template_hash: str
    containers: tuple[MigrationContainer, ...]
    live_migration: bool = False
    restore_ready: bool = False
    target_node: str = ""
    source_pod: str = ""
    target_pod: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sourceNode": self.source_node,
                               "podTemplateHash": self.pod_template_hash,
                               "containers": [c.to_json() for c in self.containers],
                               "liveMigration": self.live_migration,
                               "restoreReady": self.restore_ready}
        for key, value in (("targetNode", self.target_node), ("sourcePod", self.source_pod),
                           ("targetPod", self.target_pod)):
            if value:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MigrationSpec:
        return cls(source_node=str(data["sourceNode"]),
                   pod_template_hash=str(data["podTemplateHash"]),
                   containers=tuple(MigrationContainer.from_json(c)
                                    for c in data.get("containers") or ()),
                   live_migration=bool(data.get("liveMigration", False)),
                   restore_ready=bool(data.get("restoreReady", False)),
                   target_node=str(data.get("targetNode", "")),
                   source_pod=str(data.get("sourcePod", "")),
                   target_pod=str(data.get("targetPod", "")))


def _time(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    # RFC 3339 with microseconds (a valid date-time): the duration needs sub-second precision
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def go_duration(seconds: float) -> str:
    """A duration the way Go prints one (``1.234s``, ``250ms``, ``2m3.5s``)."""
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{round(rest, 3):g}s"
    return f"{int(minutes)}m{text}" if minutes else text


@dataclass(frozen=True)
class ContainerMigrationStatus:
    name: str
    phase: Phase = Phase.PENDING
    reason: str = ""
    paused_at: datetime.datetime | None = None
    restored_at: datetime.datetime | None = None

    @property
    def migration_duration(self) -> float | None:
        """restoredAt - pausedAt in seconds (an approximation, as upstream says)."""
        if self.paused_at is None or self.restored_at is None:
            return None
        return (self.restored_at - self.paused_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        condition: dict[str, Any] = {"phase": self.phase.value}
        if self.reason:
            condition["reason"] = self.reason
        out: dict[str, Any] = {"name": self.name, "condition": condition}
        if self.paused_at:
            out["pausedAt"] = _time(self.paused_at)
        if self.restored_at:
            out["restoredAt"] = _time(self.restored_at)
        duration = self.migration_duration
        if duration is not None:
            out["migrationDuration"] = go_duration(duration)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerMigrationStatus:
        condition = data.get("condition") or {}
        return cls(name=str(data["name"]), phase=Phase(condition.get("phase") or "Pending"),
                   reason=str(condition.get("reason", "")),
                   paused_at=_parse_time(data.get("pausedAt")),
                   restored_at=_parse_time(data.get("restoredAt")))


@dataclass(frozen=True)
class Migration:
    """A whole Migration object (metadata limited to what zeropod sets and reads)."""

    name: str
    namespace: str
    spec: MigrationSpec
    status: tuple[ContainerMigrationStatus, ...] = ()
    finalizers: tuple[str, ...] = (CLEANUP_FINALIZER,)
    owner_references: tuple[dict[str, Any], ...] = ()
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def claimed(self) -> bool:
        """A target node took it, or nobody did in time (upstream's definition)."""
        return bool(self.spec.target_node) or any(s.phase is Phase.UNCLAIMED
                                                  for s in self.status)

    def with_phase(self, container: str, phase: Phase, reason: str = "") -> Migration:
        """A copy with ``container``'s phase (and reason) set."""
        statuses = {s.name: s for s in self.status}
        current = statuses.get(container, ContainerMigrationStatus(container))
        statuses[container] = replace(current, phase=phase, reason=reason)
        return replace(self, status=tuple(statuses.values()))

    def to_json(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {**self.extra_metadata, "name": self.name,
                                    "namespace": self.namespace}
        if self.finalizers:
            metadata["finalizers"] = list(self.finalizers)
        if self.owner_references:
            metadata["ownerReferences"] = [dict(o) for o in self.owner_references]
        out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
                               "spec": self.spec.to_json()}
        if self.status:
            out["status"] = {"containers": [s.to_json() for s in self.status]}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Migration:
        if data.get("apiVersion") != API_VERSION or data.get("kind") != KIND:
            raise ValueError(f"not a {API_VERSION} {KIND}: {data.get('apiVersion')}/"
                             f"{data.get('kind')}")
        metadata = dict(data.get("metadata") or {})
        name, namespace = str(metadata.pop("name")), str(metadata.pop("namespace", ""))
        finalizers = tuple(metadata.pop("finalizers", ()) or ())
        owners = tuple(metadata.pop("ownerReferences", ()) or ())
        status = data.get("status") or {}
        return cls(name=name, namespace=namespace, spec=MigrationSpec.from_json(data["spec"]),
                   status=tuple(ContainerMigrationStatus.from_json(s)
                                for s in status.get("containers") or ()),
                   finalizers=finalizers, owner_references=owners, extra_metadata=metadata)
