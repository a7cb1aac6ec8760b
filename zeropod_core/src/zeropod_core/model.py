"""Plain data shared by the core and its plugins: who a container is and what happened to it.

These types cross the plugin boundary, so they are frozen dataclasses with no behaviour: a plugin
can keep them, log them or send them to the manager without reaching into shim internals.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Phase(enum.Enum):
    """Where a container is in its scale-to-zero life (upstream's ContainerPhase names)."""

    RUNNING = "RUNNING"
    CHECKPOINTING = "CHECKPOINTING"
    SCALED_DOWN = "SCALED_DOWN"
    RESTORING = "RESTORING"
    STOPPING = "STOPPING"
    CHECKPOINT_FAILED = "CHECKPOINT_FAILED"
    RESTORE_FAILED = "RESTORE_FAILED"


class RoleName(enum.Enum):
    """The process a plugin manager serves; each loads its own entry point group."""

    SHIM = "shim"
    MANAGER = "manager"

    @property
    def entry_point_group(self) -> str:
        return f"zeropod.{self.value}"


@dataclass(frozen=True)
class ContainerInfo:
    """Identity of one container as the shim sees it at Create.

    :ivar id: containerd's container id.
    :ivar bundle: the OCI bundle directory (config.json, rootfs).
    :ivar namespace: the containerd namespace.
    :ivar annotations: OCI annotations from config.json.
    :ivar sandbox: True for the pod's pause/sandbox container, which is never scaled.
    :ivar pod_name, pod_namespace, container_name: Kubernetes names, from the CRI annotations
        when present (empty outside Kubernetes).
    :ivar netns_path: the network namespace the container joins ("" = host or unknown).
    """

    id: str
    bundle: str
    namespace: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    sandbox: bool = False
    pod_name: str = ""
    pod_namespace: str = ""
    container_name: str = ""
    netns_path: str = ""


class Trigger(enum.Enum):
    """Why a restore was started."""

    CONNECTION = "connection"
    EXEC = "exec"
    MIGRATION = "migration"
    MANUAL = "manual"


@dataclass(frozen=True)
class Outcome:
    """Result of a checkpoint or restore attempt.

    :ivar ok: whether it succeeded.
    :ivar duration_s: wall time of the attempt.
    :ivar error: a human-readable reason when it failed.
    :ivar log_tail: the last lines of the engine's log (CRIU's) when it failed.
    :ivar image_bytes: size of the checkpoint image on disk (checkpoint only; 0 if unknown).
    :ivar stats: engine statistics, e.g. CRIU's ``freezing_time`` (microseconds).
    """

    ok: bool
    duration_s: float
    error: str = ""
    log_tail: str = ""
    image_bytes: int = 0
    stats: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerStatus:
    """A phase change, as published to the manager and to ``zeropod_phase_changed``."""

    container: ContainerInfo
    phase: Phase
    event_time: float
    duration_s: float = 0.0
    log_tail: str = ""


@dataclass(frozen=True)
class Metric:
    """One sample a shim-side plugin reports for a container (cumulative since the shim
    started, so that repeated scrapes neither lose nor double-count events).

    :ivar name: metric name (``zeropod_`` prefix).
    :ivar kind: ``counter``, ``gauge`` or ``histogram``.
    :ivar value: the value; for a histogram the sum of all observations.
    :ivar buckets: histogram only: (upper bound, cumulative count) pairs, without +Inf.
    :ivar count: histogram only: the number of observations.
    """

    name: str
    kind: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    buckets: tuple[tuple[float, int], ...] = ()
    count: int = 0


@dataclass(frozen=True)
class ManagedContainer:
    """What the node manager knows of one scale-to-zero container (a snapshot).

    :ivar shim: the node API socket of the shim that runs it.
    :ivar phase: ``RUNNING``, ``SCALED_DOWN``, ``STOPPING``, ``CHECKPOINT_FAILED`` or
        ``RESTORE_FAILED`` (upstream's ContainerPhase names).
    :ivar since: ``time.time()`` of the last phase change the manager saw.
    :ivar samples: the cumulative metrics the shim's plugins reported at the last refresh.
    """

    id: str
    name: str
    pod: str
    namespace: str
    shim: str
    phase: str
    since: float
    last_checkpoint_s: float | None = None
    last_restore_s: float | None = None
    last_wake_s: float | None = None
    image_bytes: int = 0
    samples: tuple[Metric, ...] = ()
