"""The manager's link to one shim: its status stream and its metrics, over the node API.

A link keeps the records of its shim's containers. It follows the status stream while the
shim's socket exists, reconnecting when the connection drops (a shim restart, a manager
restart on the other side); when the socket is gone the shim is gone, and so are its records
(their series disappear from ``/metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from zeropod_core import ttrpc
from zeropod_core.api import ZEROPOD_SHIM_SERVICE, zeropod_shim
from zeropod_core.model import ContainerInfo, ContainerStatus, ManagedContainer, Metric, Phase

log = logging.getLogger("zeropod.manager.links")

CALL_TIMEOUT_S = 2.0
RETRY_S = 0.5
_PHASE_NAMES = {v: k for k, v in zeropod_shim.ContainerPhase.items()}

StatusCallback = Callable[[ManagedContainer, ContainerStatus], None]


def _seconds(duration: Any) -> float | None:
    return duration.ToNanoseconds() / 1e9 if duration.ByteSize() else None


def _samples(entry: Any) -> tuple[Metric, ...]:
    return tuple(
        Metric(s.name, s.kind, s.value, dict(s.labels),
               tuple(zip(s.bucket_bounds, s.bucket_counts, strict=True)), s.count)
        for s in entry.samples)


class ShimLink:
    """Status stream and metrics of one shim's node API socket."""

    def __init__(self, path: str, on_status: StatusCallback) -> None:
        self.path, self._on_status = path, on_status
        self.records: dict[str, ManagedContainer] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name=f"shim-link-{os.path.basename(self.path)}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def gone(self) -> bool:
        return not os.path.exists(self.path)

    async def _follow(self) -> None:
        while not self.gone:
            try:
                async with await ttrpc.Client.connect(self.path) as client:
                    await self._load(client)
                    self.connected.set()
                    stream = await client.server_stream(
                        ZEROPOD_SHIM_SERVICE, "SubscribeStatus",
                        zeropod_shim.SubscribeStatusRequest(), zeropod_shim.ContainerStatus)
                    async for status in stream:
                        self._apply_status(status)
            except asyncio.CancelledError:
                raise
            except (OSError, ttrpc.RPCError) as exc:
                log.debug("shim link interrupted", extra={"shim": self.path, "error": str(exc)})
                if self.records and isinstance(exc, ConnectionRefusedError):
                    # a socket nobody listens on: the shim died without cleaning up
                    log.info("shim not answering, dropping its containers",
                             extra={"shim": self.path, "containers": len(self.records)})
                    self.records.clear()
            self.connected.clear()
            await asyncio.sleep(RETRY_S)
        log.info("shim gone", extra={"shim": self.path, "containers": len(self.records)})
        self.records.clear()

    async def _load(self, client: ttrpc.Client) -> None:
        """Rebuild this shim's records (after a manager or shim restart)."""
        await self.refresh(client)
        for container_id, record in list(self.records.items()):
            with contextlib.suppress(ttrpc.RPCError):
                status = await client.call(
                    ZEROPOD_SHIM_SERVICE, "GetStatus",
                    zeropod_shim.ContainerRequest(id=container_id),
                    zeropod_shim.ContainerStatus, timeout=CALL_TIMEOUT_S)
                self.records[container_id] = replace(
                    record, phase=_PHASE_NAMES[status.phase])
        log.info("shim linked", extra={"shim": self.path, "containers": len(self.records)})

    def _apply_status(self, status: Any) -> None:
        when = status.event_time.ToNanoseconds() / 1e9 if status.event_time.ByteSize() \
            else time.time()
        old = self.records.get(status.id)
        record = ManagedContainer(
            id=status.id, name=status.name, pod=status.pod_name,
            namespace=status.pod_namespace, shim=self.path,
            phase=_PHASE_NAMES[status.phase], since=when,
            last_checkpoint_s=old.last_checkpoint_s if old else None,
            last_restore_s=old.last_restore_s if old else None,
            last_wake_s=old.last_wake_s if old else None,
            image_bytes=old.image_bytes if old else 0, samples=old.samples if old else ())
        duration = status.event_duration.ToNanoseconds() / 1e9
        if record.phase == "SCALED_DOWN" and duration:
            record = replace(record, last_checkpoint_s=duration)
        elif record.phase == "RUNNING" and duration:
            record = replace(record, last_restore_s=duration)
        if record.phase == "STOPPING":
            self.records.pop(status.id, None)  # its series go away
        else:
            self.records[status.id] = record
        info = ContainerInfo(id=status.id, bundle="", namespace="", pod_name=status.pod_name,
                             pod_namespace=status.pod_namespace, container_name=status.name)
        self._on_status(record, ContainerStatus(info, Phase(record.phase), when, duration,
                                                status.event_log))

    async def refresh(self, client: ttrpc.Client | None = None) -> None:
        """Fetch the shim's current metrics into the records."""
        if client is None:
            async with await ttrpc.Client.connect(self.path) as own:
                return await self.refresh(own)
        response = await client.call(ZEROPOD_SHIM_SERVICE, "Metrics",
                                     zeropod_shim.MetricsRequest(),
                                     zeropod_shim.MetricsResponse, timeout=CALL_TIMEOUT_S)
        seen = set()
        for entry in response.metrics:
            seen.add(entry.id)
            old = self.records.get(entry.id)
            phase = old.phase if old else ("RUNNING" if entry.running else "SCALED_DOWN")
            self.records[entry.id] = ManagedContainer(
                id=entry.id, name=entry.name, pod=entry.pod_name,
                namespace=entry.pod_namespace, shim=self.path, phase=phase,
                since=old.since if old else time.time(),
                last_checkpoint_s=_seconds(entry.last_checkpoint_duration),
                last_restore_s=_seconds(entry.last_restore_duration),
                last_wake_s=_seconds(entry.last_wake_latency),
                image_bytes=entry.image_bytes, samples=_samples(entry))
        for gone in set(self.records) - seen:  # deleted containers
            del self.records[gone]
