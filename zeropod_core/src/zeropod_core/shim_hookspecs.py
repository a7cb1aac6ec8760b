# Hookspecs have empty bodies by design: pluggy only reads their signatures.
# mypy: disable-error-code="empty-body"
"""Hook specifications for the per-pod shim process (entry point group ``zeropod.shim``).

Rules every hook follows:

* Hooks are synchronous and called with keyword arguments, so a plugin may accept only the
  arguments it needs and new arguments can be added without breaking it.
* ``firstresult`` hooks produce one thing: a *provider object* whose ``async`` methods the core
  awaits. Never write ``async def`` hook implementations.
* Notification hooks (lifecycle, phase) are called implementation by implementation by the
  core's facade: an exception in one plugin is logged and does not stop the others or the shim.
* Nothing heavy may be imported at module level of a shim plugin: there is one shim per pod.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from . import PROJECT_NAME

if TYPE_CHECKING:
    from .model import ContainerInfo, ContainerStatus, Metric, Outcome, Trigger
    from .providers import (
        ActivityTracker,
        Checkpointer,
        Migrator,
        Redirector,
        RuntimeHandle,
        TaskCheckpointer,
    )

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

AnnotationParser = Callable[[str], object]
"""Turns an annotation's string value into a typed value; raises ValueError when malformed."""


# --- configuration (historic: replayed for plugins registered later) -------------------------


@hookspec(historic=True)
def zeropod_register_annotations(
    register: Callable[[str, AnnotationParser, str | None, str], None],
) -> None:
    """Declare the OCI annotations this plugin owns.

    Call ``register(name, parse, default, help)`` once per annotation. At ``Create`` the core
    parses every registered annotation present on the container; a value that ``parse``
    rejects fails the container's creation with an error naming the annotation and the value.

    :param register: the registration callback.
    """


@hookspec(historic=True)
def zeropod_configure(settings: Mapping[str, str]) -> None:
    """Called once per shim process before any container is created.

    :param settings: the process settings: every ``ZEROPOD_*`` environment variable (e.g.
        ``ZEROPOD_IMAGE_ROOT``) plus containerd's runtime options, as strings.
    """


# --- providers (firstresult) -----------------------------------------------------------------


@hookspec
def zeropod_modify_spec(container: ContainerInfo, spec: dict[str, Any],
                        config: Mapping[str, object]) -> None:
    """Adjust the OCI spec of a managed container before ``runc create`` (in place).

    The core writes the spec back to the bundle's ``config.json`` when any implementation
    changed it. Example: the criu plugin names its CRIU configuration file in the
    ``org.criu.config`` annotation, which runc reads at create and restore.

    :param container: the container.
    :param spec: the parsed ``config.json``; change it in place.
    :param config: parsed values of the registered annotations, keyed by annotation name.
    """


@hookspec(firstresult=True)
def zeropod_make_checkpointer(
    container: ContainerInfo, runtime: RuntimeHandle, config: Mapping[str, object]
) -> Checkpointer | None:
    """Return the checkpoint/restore engine for a managed container, or None to pass.

    Called once at ``Create`` (after ``runc create``) for every container that may scale
    down. The core's own implementation runs last and kills + cold-starts (state is lost).

    :param container: the container.
    :param runtime: the shim's runc driver for that container.
    :param config: parsed values of the registered annotations, keyed by annotation name.
    """


@hookspec(firstresult=True)
def zeropod_make_task_checkpointer(
    container: ContainerInfo, runtime: RuntimeHandle
) -> TaskCheckpointer | None:
    """Return what serves containerd's own checkpoint API for a container, or None to pass.

    Called when containerd asks this shim to ``Checkpoint`` a task or to create one from a
    checkpoint image (``ctr c checkpoint``/``ctr c restore``, the kubelet's checkpoint API),
    for any container, managed or not. Without an implementation those calls fail with an
    error saying that checkpointing needs the criu plugin.

    :param container: the container.
    :param runtime: the shim's runc driver for that container.
    """


@hookspec(firstresult=True)
def zeropod_make_redirector(container: ContainerInfo) -> Redirector | None:
    """Return the redirector that sends new connections to the activator while scaled down.

    Without one, waking on traffic is off and the shim logs it.

    :param container: the container.
    """


@hookspec(firstresult=True)
def zeropod_make_activity_tracker(container: ContainerInfo) -> ActivityTracker | None:
    """Return the tracker that reports the last TCP activity on the container's ports.

    Without one the container scales down on a plain timer after start or restore.

    :param container: the container.
    """


@hookspec(firstresult=True)
def zeropod_make_migrator(container: ContainerInfo,
                          config: Mapping[str, object]) -> Migrator | None:
    """Return the migrator of a managed container that may arrive from another node, or None.

    Called at ``Create`` (after the rootfs is mounted) for every container that may scale
    down; the core then asks :meth:`Migrator.incoming` whether it starts from a transferred
    image, asleep.

    :param container: the container.
    :param config: parsed values of the registered annotations, keyed by annotation name.
    """


@hookspec(firstresult=True)
def zeropod_classify_connection(container: ContainerInfo, peek: bytes) -> str | None:
    """Decide what the activator does with a connection that arrived while scaled down.

    Return ``"probe"`` to answer it without waking the container (a kubelet probe),
    ``"wake"`` to restore and proxy it, or None to let the next implementation decide. The
    core's implementation recognises ``User-Agent: kube-probe/`` and otherwise wakes.

    :param container: the container the connection is for.
    :param peek: the first bytes the client sent (may be empty: a TCP connect-and-close).
    """


@hookspec(firstresult=True)
def zeropod_update_while_scaled_down(
    container: ContainerInfo, resources: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """A resource ``Update`` arrived while the container sleeps: choose what it wakes with.

    There is no process to update, so the core keeps the last ``Update`` and applies it
    (``runc update``) right after the restore, before the container serves again. Return
    other OCI ``LinuxResources`` to apply instead (e.g. to ignore a temporary change), or
    None to keep ``resources``.

    :param container: the sleeping container.
    :param resources: the OCI ``LinuxResources`` of the ``Update`` (decoded JSON).
    """


# --- lifecycle notifications (all implementations, isolated) ---------------------------------


@hookspec
def zeropod_container_created(container: ContainerInfo, config: Mapping[str, object]) -> None:
    """A container was created by this shim.

    :param container: the container.
    :param config: parsed values of the registered annotations, keyed by annotation name.
    """


@hookspec
def zeropod_container_deleted(container: ContainerInfo) -> None:
    """A container was deleted; release anything held for it.

    :param container: the container.
    """


@hookspec
def zeropod_before_checkpoint(container: ContainerInfo) -> None:
    """The container is about to be checkpointed (the redirect is already on).

    :param container: the container.
    """


@hookspec
def zeropod_after_checkpoint(container: ContainerInfo, outcome: Outcome) -> None:
    """A checkpoint attempt ended.

    :param container: the container.
    :param outcome: whether it worked, how long it took, the CRIU log tail on failure.
    """


@hookspec
def zeropod_stopping_asleep(container: ContainerInfo) -> None:
    """The container is being stopped (``Kill``) while scaled down; right after this its
    checkpoint image is discarded. A plugin may take the image away first (the migration
    plugin hands it over to the node's manager so that the pod's replacement can start
    from it).

    :param container: the container.
    """


@hookspec
def zeropod_stopping_running(container: ContainerInfo) -> Awaitable[None] | None:
    """The container is being stopped (``Kill`` with a stop signal) while its app runs;
    the signal is sent after every returned awaitable finished. A plugin may hold the stop
    this way while the app moves away (the migration plugin waits here until the node's
    manager handed a live-migrating container over to its replacement's node; the app is
    then gone and the container ends as a sleeping one). The plugin bounds its own wait;
    an awaitable that raises is logged and the stop goes on.

    :param container: the container.
    :return: an awaitable to wait for, or None.
    """


@hookspec
def zeropod_before_restore(container: ContainerInfo, trigger: Trigger) -> None:
    """The container is about to be restored.

    :param container: the container.
    :param trigger: what woke it (connection, exec, migration).
    """


@hookspec
def zeropod_after_restore(container: ContainerInfo, outcome: Outcome) -> None:
    """A restore attempt ended (a failed restore is followed by a cold start).

    :param container: the container.
    :param outcome: whether it worked and how long it took.
    """


@hookspec
def zeropod_phase_changed(status: ContainerStatus) -> None:
    """The container entered a new phase; the same event goes to the manager.

    :param status: the container, its new phase, the event time and duration.
    """


# --- metrics (all implementations, results concatenated) -------------------------------------


@hookspec
def zeropod_collect_metrics(container: ContainerInfo) -> list[Metric]:
    """Return the samples this plugin has for a container (called on each manager scrape).

    :param container: the container.
    """
