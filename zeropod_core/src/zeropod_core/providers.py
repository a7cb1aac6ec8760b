"""The provider interfaces that firstresult factory hooks return.

pluggy does not await coroutines (an unawaited coroutine would even count as a first result), so
hooks stay synchronous and return *provider objects*; the core awaits their ``async`` methods
itself. These are ``typing.Protocol`` classes: a plugin implements them structurally and never
imports a base class it would have to keep in step with the core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .model import ContainerInfo, ContainerStatus, ManagedContainer, Outcome


@dataclass(frozen=True)
class RestoredProcess:
    """What a successful restore hands back: the new host PID of the container's init."""

    pid: int
    outcome: Outcome


@dataclass(frozen=True)
class RuncResult:
    """Exit code of one runc invocation and, when it failed, runc's error message."""

    returncode: int
    error: str


@dataclass(frozen=True)
class StdioPipes:
    """The process's ends of new stdio pipes: stdin's read end, stdout's and stderr's write ends.

    On restore, runc maps these onto the restored process's pipe fds, so the shim keeps
    forwarding output to containerd's FIFOs across checkpoints. Pass them as ``stdio`` to the
    runc call that starts the process, then :meth:`close` them (the process holds copies).
    """

    stdin: int
    stdout: int
    stderr: int

    def close(self) -> None:
        for fd in (self.stdin, self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class CheckpointRequest:
    """containerd's ``Checkpoint`` of a task: runc's ``CheckpointOptions`` and the paths.

    ``image_path`` is where the image goes (containerd packs it into its content store
    afterwards, or the client keeps it there); ``work_path`` is for CRIU's logs ("" = a
    folder of the checkpointer's choosing, removed afterwards).
    """

    exit: bool = False
    open_tcp: bool = False
    external_unix_sockets: bool = False
    terminal: bool = False
    file_locks: bool = False
    empty_namespaces: tuple[str, ...] = ()
    cgroups_mode: str = ""
    image_path: str = ""
    work_path: str = ""


@dataclass(frozen=True)
class RestoreRequest:
    """A task created from a checkpoint image (``Create`` with ``checkpoint``), at ``Start``.

    The restored process's stdio are ``stdio`` (pipes) or, for a terminal, the pty runc sends
    to ``console_socket``; its host PID goes to ``pid_file``.
    """

    image_path: str
    work_path: str
    pid_file: str
    console_socket: str = ""
    no_pivot_root: bool = False


class CheckpointApiError(RuntimeError):
    """A checkpoint or restore asked through containerd's API failed; the message says why
    (runc's error and where CRIU's log is)."""


class RuntimeHandle(Protocol):
    """What the shim lends a checkpointer for one container: paths, PID and its runc driver."""

    @property
    def container(self) -> ContainerInfo: ...

    @property
    def bundle(self) -> Path:
        """The OCI bundle (``config.json``, ``rootfs``)."""
        ...

    @property
    def runc_root(self) -> Path:
        """The ``--root`` of every runc call for this container."""
        ...

    @property
    def init_pid(self) -> int:
        """The current host PID of the container's init (it changes on every restore)."""
        ...

    async def runc(self, *args: str, stdio: StdioPipes | None = None,
                   timeout_s: float | None = None, netns: str | None = None) -> RuncResult:
        """Run ``runc --root <runc_root> --log <bundle>/log.json <args>`` through the shim's
        reaper (never with subprocess: the shim is the only reaper of its children). After
        ``timeout_s`` runc and everything it started (CRIU) are killed and the call fails.
        ``netns``: start runc inside the network namespace at that path (a restore of an
        image CRIU dumped from inside the pod's namespace)."""
        ...

    def new_stdio(self) -> StdioPipes:
        """Fresh pipes wired to containerd's FIFOs, for a restored or cold-started process."""
        ...


@runtime_checkable
class Checkpointer(Protocol):
    """Takes a container to disk and back. Provided by ``zeropod-criu``.

    The core's fallback (no CRIU) kills the container on scale-down and cold-starts it from the
    bundle on wake-up, which loses in-memory state; that is why a real checkpointer exists.
    """

    async def checkpoint(self) -> Outcome:
        """Write the container's state to disk and stop it. On failure the app keeps running."""
        ...

    async def restore(self) -> RestoredProcess:
        """Start the container from its image. Raises on failure; the core then cold-starts."""
        ...

    async def discard(self) -> None:
        """Remove the image of a container that is deleted while scaled down."""
        ...


@runtime_checkable
class TaskCheckpointer(Protocol):
    """containerd's own checkpoint API for one container (``ctr c checkpoint``, ``ctr c
    restore``, the kubelet's container checkpoint). Provided by ``zeropod-criu``.

    The core wakes a sleeping container before :meth:`checkpoint` and serialises it with
    scale-down; without a provider these calls fail with a clear error.
    """

    async def checkpoint(self, request: CheckpointRequest) -> None:
        """Write the running container's image to ``request.image_path``; leave it running
        unless ``request.exit``. Raise :class:`CheckpointApiError` on failure."""
        ...

    async def restore(self, request: RestoreRequest, stdio: StdioPipes | None) -> None:
        """Create and start the container from ``request.image_path`` (``runc restore``).
        Raise :class:`CheckpointApiError` on failure."""
        ...


@runtime_checkable
class Redirector(Protocol):
    """Sends new connections for the app's ports to the activator while it sleeps."""

    def activator_port(self, app_port: int) -> int:
        """The port the activator listens on for ``app_port``, inside the pod's namespace."""
        ...

    async def redirect(self, ports: Sequence[int]) -> None:
        """Turn the redirect on (before the checkpoint starts)."""
        ...

    async def release(self, ports: Sequence[int]) -> None:
        """Turn it off (after the restored process runs). Proxied connections stay put."""
        ...

    async def close(self) -> None:
        """Drop everything this redirector holds for the container."""
        ...


@runtime_checkable
class ActivityTracker(Protocol):
    """Answers "when did this container last see TCP traffic on its ports?"."""

    async def track(self, ports: Sequence[int]) -> None:
        """Start recording activity on ``ports`` (replaces an earlier set)."""
        ...

    def last_activity(self) -> float | None:
        """``time.monotonic()`` of the last packet on a tracked port, None if never."""
        ...

    async def close(self) -> None:
        """Stop tracking."""
        ...


@dataclass(frozen=True)
class IncomingImage:
    """A checkpoint image that another node sent for this container, already in place where
    the container's checkpointer restores from (``<image root>/<container id>/snapshot``).

    :ivar ports: the app's ports on the source node: no process runs on this node to detect
        them, and the activator must listen for them from the start.
    :ivar source: where the image came from (logs), e.g. ``node-a/<source container id>``.
    """

    ports: tuple[int, ...]
    source: str = ""


@runtime_checkable
class Migrator(Protocol):
    """The shim's side of moving a container between nodes. Provided by ``zeropod-migration``.

    The transfer itself runs in the node manager (the shim never speaks gRPC); the shim only
    asks whether its new container starts from an image that arrived from another node.
    """

    async def incoming(self) -> IncomingImage | None:
        """Called at ``Create`` of a managed container, after its rootfs is mounted and before
        anything runs. Return the image it starts from, *scaled down* (no ``runc create``;
        ``Start`` puts it to sleep with the redirect on; the first connection restores it), or
        None to create and start it normally. Files the container had written are put into
        its rootfs here. Must not raise for a missing image: a migration that did not happen
        means a fresh start."""
        ...


class NodeView(Protocol):
    """The manager's current view of its node, for plugins (metrics exporters, resize)."""

    def containers(self) -> Sequence[ManagedContainer]:
        """Every container of every shim the manager is connected to."""
        ...


class CollectorRegistryLike(Protocol):
    """The part of ``prometheus_client.CollectorRegistry`` the manager hands to plugins."""

    def register(self, collector: Any) -> None: ...


@runtime_checkable
class MigrationService(Protocol):
    """The manager's node-to-node endpoint for migrations."""

    async def serve(self) -> None:
        """Run until cancelled."""
        ...


@runtime_checkable
class PodResizer(Protocol):
    """Shrinks the requests of a sleeping container's pod in place and restores them on wake
    (the scheduler can use what a sleeping pod does not). Provided by ``zeropod-resize``."""

    async def resize(self, status: ContainerStatus, pod: Mapping[str, Any]) -> None:
        """Make the requests of ``status.container`` fit its phase: the minimum while
        ``SCALED_DOWN``, the original ones when ``RUNNING``. ``pod`` is the pod as just
        updated; an unchanged pod needs no call. Raise nothing for a refusal the plugin
        already logged; a :class:`~zeropod_core.manager.kube.KubeError` is logged by the
        core."""
        ...
