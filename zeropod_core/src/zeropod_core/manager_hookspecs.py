# Hookspecs have empty bodies by design: pluggy only reads their signatures.
# mypy: disable-error-code="empty-body"
"""Hook specifications for the per-node manager (entry point group ``zeropod.manager``).

The manager is where heavy dependencies live (Prometheus client, Kubernetes client, gRPC), so
its plugins may import them; the same rules as the shim's hooks apply otherwise: synchronous
hooks, keyword arguments, provider objects with ``async`` methods for firstresult hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from . import PROJECT_NAME

if TYPE_CHECKING:
    from .manager.kube import KubeApi
    from .model import ContainerInfo, ContainerStatus
    from .providers import (
        CollectorRegistryLike,
        MigrationController,
        MigrationService,
        NodeView,
        PodResizer,
    )

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec(historic=True)
def zeropod_manager_configure(settings: Mapping[str, str]) -> None:
    """Called once when the manager starts, before it discovers shims.

    :param settings: every ``ZEROPOD_*`` environment variable plus command line options.
    """


@hookspec
def zeropod_node_capabilities() -> Mapping[str, object]:
    """Report what this node can do for the plugin (shown in ``/healthz`` and at startup).

    Example: ``{"criu": "4.2.1", "pre_dump": False}``. Results of all plugins are merged.
    """


@hookspec
def zeropod_register_collectors(registry: CollectorRegistryLike, node: NodeView) -> None:
    """Register Prometheus collectors that the manager's ``/metrics`` serves.

    Called once at startup. Before each scrape the manager refreshes ``node`` from every
    shim, so a collector reads ``node.containers()`` when it is collected.

    :param registry: the manager's collector registry.
    :param node: the manager's view of the node's containers.
    """


@hookspec
def zeropod_handle_status(status: ContainerStatus) -> None:
    """A shim reported a phase change; resize requests, set labels, emit events.

    Called for every event of every shim, in order per container.

    :param status: the container, its new phase, the event time and duration.
    """


@hookspec
def zeropod_edit_pod(status: ContainerStatus, pod: dict[str, Any], kube: KubeApi) -> None:
    """Change the pod of a status event in memory: labels, annotations (not the spec).

    Called only when the manager has Kubernetes access, once per event of a container of a
    pod (``RUNNING``, ``SCALED_DOWN``, ``CHECKPOINT_FAILED``, ``RESTORE_FAILED``), in a
    worker thread, in order per pod. The core reads the pod, lets every implementation edit
    it, and writes it back in one update if anything changed; on a conflict it reads the pod
    again and calls the implementations again, so an edit must depend only on the pod and
    the event. Make no API calls here.

    :param status: the container's new phase.
    :param pod: the pod as the API returned it (a JSON dict); change it in place.
    :param kube: the manager's Kubernetes access (switches, node name).
    """


@hookspec
def zeropod_pod_updated(status: ContainerStatus, pod: dict[str, Any], kube: KubeApi) -> None:
    """The pod was updated for a status event (and resized): emit Kubernetes events, etc.

    Runs in a worker thread, in order per pod: blocking API calls through ``kube`` are fine.
    A :class:`~zeropod_core.manager.kube.KubeError` saying the API is unreachable makes the
    core retry the call with a back-off; any other is logged once per kind.

    :param status: the container's new phase.
    :param pod: the pod after the update.
    :param kube: the manager's Kubernetes access.
    """


@hookspec(firstresult=True)
def zeropod_make_pod_resizer(kube: KubeApi) -> PodResizer | None:
    """Return what shrinks a sleeping container's requests and restores them on wake.

    Asked once at start-up when the manager runs with ``--in-place-scaling``; without an
    implementation the manager logs that in-place scaling is unavailable.

    :param kube: the manager's Kubernetes access.
    """


@hookspec
def zeropod_sandbox_started(sandbox: ContainerInfo) -> None:
    """A pod sandbox appeared on this node (its shim registered with the manager).

    :param sandbox: the pod's sandbox (pause) container.
    """


@hookspec
def zeropod_sandbox_stopped(sandbox: ContainerInfo) -> None:
    """A pod sandbox went away; release what was set up for it.

    :param sandbox: the pod's sandbox (pause) container.
    """


@hookspec
def zeropod_node_housekeeping(node: NodeView) -> None:
    """Periodic clean-up of what containers left on the node (e.g. orphaned images).

    Called every ``ZEROPOD_HOUSEKEEPING_INTERVAL`` seconds (default 60; the first time once
    the manager has looked for shims), in a worker thread: blocking file work is fine, but
    touch only what ``node`` proves dead, and never anything of a container it lists.

    :param node: a snapshot of every container of every shim the manager is connected to.
    """


@hookspec(firstresult=True)
def zeropod_make_migration_service(settings: Mapping[str, str],
                                   kube: KubeApi | None) -> MigrationService | None:
    """Return the node-to-node migration endpoint, or None when migration is not installed.

    Called once at start (before the event loop runs: blocking calls are fine).

    :param settings: the manager's settings.
    :param kube: the Kubernetes API when ``--migration-controller`` is on (the cluster CA of
        the endpoint's certificates is then kept in a Secret), else None.
    """


@hookspec(firstresult=True)
def zeropod_make_migration_controller(kube: KubeApi, node: NodeView,
                                      service: MigrationService | None,
                                      settings: Mapping[str, str]
                                      ) -> MigrationController | None:
    """Return the Kubernetes-driven migration controller (``--migration-controller``).

    The manager runs its :meth:`~zeropod_core.providers.MigrationController.run` and passes
    it the shims' requests that arrive on the manager's node API socket
    (``POST /v1/migration``).

    :param kube: the Kubernetes API (blocking calls: make them from worker threads).
    :param node: the manager's live view of the node's containers.
    :param service: the node's image service (None when it could not start).
    :param settings: the manager's settings.
    """
