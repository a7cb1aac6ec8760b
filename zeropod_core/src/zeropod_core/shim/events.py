"""Publishes task events to containerd over its ttrpc socket (``$TTRPC_ADDRESS``).

Events go out in the order they were published, from one background task, so a ``TaskExit``
never overtakes the ``TaskStart`` of the same process. The caller never waits for containerd:
when containerd is away (restarting) the publisher reconnects and retries each event with a
growing delay, for up to :data:`RETRY_FOR_S`, then drops it with an error log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from google.protobuf import empty_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from zeropod_core import ttrpc
from zeropod_core.api import EVENTS_SERVICE, events_service, typeurl

log = logging.getLogger("zeropod.shim.events")

RETRY_FOR_S = 60.0
_TOPICS = {
    "TaskCreate": "/tasks/create", "TaskStart": "/tasks/start", "TaskExit": "/tasks/exit",
    "TaskDelete": "/tasks/delete", "TaskExecAdded": "/tasks/exec-added",
    "TaskExecStarted": "/tasks/exec-started", "TaskOOM": "/tasks/oom",
    "TaskPaused": "/tasks/paused", "TaskResumed": "/tasks/resumed",
    "TaskCheckpointed": "/tasks/checkpointed",
}


def topic_of(event: Message) -> str:
    """containerd's topic for a task event message (``TaskExit`` -> ``/tasks/exit``)."""
    return _TOPICS[event.DESCRIPTOR.name]


@dataclass(frozen=True)
class _Pending:
    event: Message
    timestamp: Timestamp


class EventPublisher:
    """Queues events and forwards them to containerd in order."""

    def __init__(self, ttrpc_address: str, namespace: str) -> None:
        self.address, self.namespace = ttrpc_address, namespace
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._client: ttrpc.Client | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    def publish(self, event: Message) -> None:
        """Queue ``event`` (a ``containerd.events.Task*`` message) for containerd."""
        stamp = Timestamp()
        stamp.GetCurrentTime()
        self._queue.put_nowait(_Pending(event, stamp))
        log.debug("event queued", extra={"topic": topic_of(event)})

    async def flush(self, timeout: float) -> None:
        """Wait until every queued event was sent (or ``timeout`` passed)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    async def _run(self) -> None:
        while True:
            pending = await self._queue.get()
            try:
                await self._send_with_retry(pending)
            finally:
                self._queue.task_done()

    async def _send_with_retry(self, pending: _Pending) -> None:
        topic = topic_of(pending.event)
        request = events_service.ForwardRequest(envelope=events_service.Envelope(
            timestamp=pending.timestamp, namespace=self.namespace, topic=topic,
            event=typeurl.pack(pending.event)))
        give_up = time.monotonic() + RETRY_FOR_S
        delay = 0.01
        while True:
            try:
                if self._client is None:
                    self._client = await ttrpc.Client.connect(self.address)
                await self._client.call(EVENTS_SERVICE, "Forward", request,
                                        empty_pb2.Empty, timeout=5.0)
                log.debug("event published", extra={"topic": topic})
                return
            except (TimeoutError, OSError, ttrpc.RPCError) as exc:
                if self._client is not None:
                    await self._client.close()
                    self._client = None
                if time.monotonic() > give_up:
                    log.error("dropping event: containerd unreachable",
                              extra={"topic": topic, "error": str(exc)})
                    return
                log.warning("publishing event failed, retrying",
                            extra={"topic": topic, "error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

