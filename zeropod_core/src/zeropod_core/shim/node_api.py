"""The shim's node API for the manager: ``zeropod.shim.v1.Shim`` on a second unix socket.

Served on ``<ZEROPOD_SOCKET_DIR>/<name of the shim's socket>.sock`` (default folder
``/run/zeropod/s``, socket mode 0600), where the node manager discovers it:

* ``Metrics``: per managed container, upstream's fields (last checkpoint/restore time and
  duration, running, error counts) plus the cumulative samples the shim's plugins report;
* ``GetStatus``: a container's current phase;
* ``LiveMigrate``: hands a running container over to another node live (a stream of
  READY, then DONE or FAILED; see :meth:`NodeService.live_migrate`);
* ``SubscribeStatus``: a stream of phase changes. Every subscriber gets every event through its
  own bounded queue; a subscriber that does not keep up loses its oldest events (logged)
  instead of slowing the shim down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from zeropod_core import hookimpl, ttrpc
from zeropod_core.api import ZEROPOD_SHIM_SERVICE, zeropod_shim
from zeropod_core.hooks import ShimHooks
from zeropod_core.model import ContainerStatus, Metric, Outcome, Phase

from .pbtime import duration, timestamp
from .process import Container
from .scaler import HandOverRefused

log = logging.getLogger("zeropod.shim.node")

DEFAULT_SOCKET_DIR = "/run/zeropod/s"
SUBSCRIBER_QUEUE = 256
_PHASES = {Phase.RUNNING: "RUNNING", Phase.SCALED_DOWN: "SCALED_DOWN",
           Phase.STOPPING: "STOPPING", Phase.CHECKPOINT_FAILED: "CHECKPOINT_FAILED",
           Phase.RESTORE_FAILED: "RESTORE_FAILED",
           # transitions report where they come from until they are done
           Phase.CHECKPOINTING: "RUNNING", Phase.RESTORING: "SCALED_DOWN"}


_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def node_socket_path(shim_socket: str) -> str:
    """``<ZEROPOD_SOCKET_DIR>/<shim socket name>.sock``, or a shorter hashed name when that
    would not fit a unix socket address (a deep socket folder). The manager finds every
    ``*.sock`` in the folder, whatever its name."""
    folder = os.environ.get("ZEROPOD_SOCKET_DIR", DEFAULT_SOCKET_DIR)
    path = os.path.join(folder, os.path.basename(shim_socket) + ".sock")
    if len(path) <= _MAX_SOCKET_PATH:
        return path
    import hashlib  # only for deep folders

    digest = hashlib.sha256(shim_socket.encode()).hexdigest()[:24]
    return os.path.join(folder, f"zp-{digest}.sock")


def status_message(status: ContainerStatus) -> Any:
    info = status.container
    return zeropod_shim.ContainerStatus(
        id=info.id, name=info.container_name or info.id, pod_name=info.pod_name,
        pod_namespace=info.pod_namespace, phase=_PHASES[status.phase],
        event_time=timestamp(status.event_time), event_duration=duration(status.duration_s),
        event_log=status.log_tail)


def sample_message(metric: Metric) -> Any:
    return zeropod_shim.Sample(
        name=metric.name, kind=metric.kind, value=metric.value, labels=dict(metric.labels),
        bucket_bounds=[bound for bound, _ in metric.buckets],
        bucket_counts=[count for _, count in metric.buckets], count=metric.count)


class NodeService:
    """Implements ``zeropod.shim.v1.Shim`` over the containers of one shim."""

    def __init__(self, containers: Callable[[], dict[str, Container]],
                 hooks: ShimHooks) -> None:
        self._containers, self.hooks = containers, hooks
        self._subscribers: set[asyncio.Queue[Any]] = set()
        self._handovers: set[asyncio.Task[None]] = set()

    # a plugin object: the shim's plugin manager hands us every phase change
    @hookimpl
    def zeropod_phase_changed(self, status: ContainerStatus) -> None:
        message = status_message(status)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                log.warning("a status subscriber is slow; dropped its oldest event")
            queue.put_nowait(message)

    async def metrics(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        response = zeropod_shim.MetricsResponse()
        for container in self._containers().values():
            scaler = container.scaler
            if scaler is None:
                continue
            info = container.info
            entry = response.metrics.add(
                id=info.id, name=info.container_name or info.id, pod_name=info.pod_name,
                pod_namespace=info.pod_namespace, running=scaler.phase is not Phase.SCALED_DOWN,
                checkpoint_errors=scaler.checkpoint_errors, restore_errors=scaler.restore_errors)
            if scaler.last_checkpoint_at:
                entry.last_checkpoint.CopyFrom(timestamp(scaler.last_checkpoint_at))
                if scaler.last_checkpoint is not None:
                    entry.last_checkpoint_duration.CopyFrom(
                        duration(scaler.last_checkpoint.duration_s))
            if scaler.last_checkpoint is not None:
                entry.image_bytes = scaler.last_checkpoint.image_bytes
            if scaler.activator is not None and scaler.activator.last_wake_s:
                entry.last_wake_latency.CopyFrom(duration(scaler.activator.last_wake_s))
            if scaler.last_restore_at:
                entry.last_restore.CopyFrom(timestamp(scaler.last_restore_at))
                if scaler.last_restore is not None:
                    entry.last_restore_duration.CopyFrom(
                        duration(scaler.last_restore.duration_s))
            entry.samples.extend(sample_message(m) for m in self.hooks.collect_metrics(info))
        return response

    async def get_status(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._containers().get(req.id)
        if container is None:
            raise ttrpc.NotFound(f"container {req.id}: not found")
        phase = container.scaler.phase if container.scaler is not None else Phase.RUNNING
        info = container.info
        return zeropod_shim.ContainerStatus(
            id=info.id, name=info.container_name or info.id, pod_name=info.pod_name,
            pod_namespace=info.pod_namespace, phase=_PHASES[phase])

    async def subscribe_status(self, ctx: ttrpc.CallContext,
                               req: Any) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        log.info("status subscriber connected", extra={"subscribers": len(self._subscribers)})
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)


    async def live_migrate(self, ctx: ttrpc.CallContext, req: Any) -> AsyncIterator[Any]:
        """Hand a running container over live (:meth:`Scaler.hand_over`): READY once its
        memory-less image is written and CRIU's page server listens, DONE when every page
        left; FAILED (with the error) otherwise."""
        container = self._containers().get(req.id)
        if container is None:
            raise ttrpc.NotFound(f"container {req.id}: not found")
        scaler = container.scaler
        if scaler is None:
            raise ttrpc.FailedPrecondition(f"container {req.id}: not managed by zeropod")
        if not 0 < req.page_server_port < 65536:
            raise ttrpc.InvalidArgument(f"page_server_port {req.page_server_port}: not a port")
        events: asyncio.Queue[Any] = asyncio.Queue()
        stage = zeropod_shim.LiveMigrateEvent

        def ready(outcome: Outcome) -> None:
            events.put_nowait(stage(stage=stage.READY, time=timestamp(time.time()),
                                    image_bytes=outcome.image_bytes,
                                    duration=duration(outcome.duration_s)))

        async def run() -> None:
            try:
                outcome = await scaler.hand_over(req.page_server_port, ready)
            except HandOverRefused as exc:
                outcome = Outcome(ok=False, duration_s=0.0, error=str(exc))
            events.put_nowait(stage(
                stage=stage.DONE if outcome.ok else stage.FAILED, time=timestamp(time.time()),
                duration=duration(outcome.duration_s), error=outcome.error))
            events.put_nowait(None)

        # the hand-over goes on when the caller goes away: the target may still need pages
        task = asyncio.get_running_loop().create_task(run(), name=f"live-migrate-{req.id}")
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)
        while (event := await events.get()) is not None:
            yield event


class NodeApi:
    """The node API's ttrpc server on its own socket."""

    def __init__(self, service: NodeService, shim_socket: str) -> None:
        self.service, self.path = service, node_socket_path(shim_socket)
        self._server: ttrpc.Server | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        server = ttrpc.Server()
        server.register(ZEROPOD_SHIM_SERVICE, ttrpc.service_methods(
            zeropod_shim.DESCRIPTOR.services_by_name["Shim"], self.service))
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            await server.serve_unix(self.path)
        finally:
            os.umask(old_umask)
        self._server = server
        self.service.hooks.pm.register(self.service, name="zeropod-node-api")
        log.info("node API serving", extra={"socket": self.path})

    async def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self.service.hooks.pm.unregister(self.service)
            await self._server.shutdown(grace=1)
            self._server = None
