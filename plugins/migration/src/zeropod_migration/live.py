"""Live migration's orchestration on the managers' side: what a Kubernetes flow calls.

One running container (``zeropod.ctrox.dev/live-migrate``) moves from a source node to a
target node while it keeps its memory, through the shims of both nodes::

    target manager                      source manager                source shim
    TargetArrival.prepare()             SourceHandOver.prepare()
      TargetProxy (127.0.0.1, plain)      SourceProxy (mutual TLS) -> 127.0.0.1:<CRIU port>
    TargetArrival.expect(key)
    the target container is created (kubelet / ctr): its shim waits in Create
                                        SourceHandOver.dump()  ----->  LiveMigrate (node API)
                                          <- READY (pausedAt)          lazy dump, cgroup frozen,
    TargetArrival.receive()                                            CRIU's page server
      pull the memory-less image (image service) into .live/<key>/, write
      zeropod-live.json (the TargetProxy's port): the waiting shim takes it and restores
      at once, criu lazy-pages --page-server -> TargetProxy ==TLS==> SourceProxy -> CRIU
    TargetArrival.wait_restored() (restoredAt)
                                        SourceHandOver.finished()   <- DONE: every page left,
                                                                       the source process gone
    close both                          (the source container is deleted as usual)

Both proxies start, and the target container is created, before the dump: the freeze pays
only the dump, the pull and the restore. A node without userfaultfd or the pipe size CRIU's
page server needs refuses up front (:class:`LiveMigrationUnavailable`, the same check as
``/healthz``).
:func:`find_shim_socket` finds the node API socket of a container's shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from zeropod_core import ttrpc
from zeropod_core.api import ZEROPOD_SHIM_SERVICE, zeropod_shim

from . import image_ports
from .annotations import LIVE_FILE, LIVE_PENDING
from .capabilities import live_migration_support
from .pageproxy import SourceProxy, TargetProxy
from .receive import Received, mark_received
from .service import IMAGE_SUBDIR, check_image_id, open_channel, pull_image
from .tls import NodeCredentials

log = logging.getLogger("zeropod.migration.live")

CALL_TIMEOUT_S = 5.0


class LiveMigrationUnavailable(RuntimeError):
    """This node cannot do live migration (no userfaultfd, pipes too small); says why."""


class LiveMigrationFailed(RuntimeError):
    """The source shim refused or failed the live dump (the app runs on at the source)."""


def check_node(proc: Path = Path("/proc")) -> None:
    """Refuse up front on a node where CRIU's lazy pages cannot work."""
    support = live_migration_support(proc)
    if not support["available"]:
        raise LiveMigrationUnavailable(f"live migration is not possible on this node: "
                                       f"{support['reason']}")


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for CRIU's page server, which cannot tell)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def find_shim_socket(socket_dir: Path, container_id: str) -> str:
    """The node API socket (``*.sock`` in ``socket_dir``) of the shim that runs
    ``container_id``; raises LookupError naming the container when none does."""
    for name in sorted(os.listdir(socket_dir)):
        if not name.endswith(".sock"):
            continue
        path = str(socket_dir / name)
        with contextlib.suppress(OSError, ttrpc.RPCError, TimeoutError):
            async with await ttrpc.Client.connect(path) as client:
                await client.call(ZEROPOD_SHIM_SERVICE, "GetStatus",
                                  zeropod_shim.ContainerRequest(id=container_id),
                                  zeropod_shim.ContainerStatus, timeout=CALL_TIMEOUT_S)
                return path
    raise LookupError(f"no shim in {socket_dir} runs container {container_id}")


@dataclass(frozen=True)
class Paused:
    """The source's READY: the image is written, the app frozen since ``paused_at``."""

    paused_at: float  # time.time() of the freeze (the Migration status' pausedAt)
    ready_at: float  # time.time() of READY
    image_bytes: int


class SourceHandOver:
    """The source node's side: the page-server proxy and the shim's ``LiveMigrate``.

    :param shim_socket: the node API socket of the container's shim.
    :param listen: where the proxy listens for the target's proxy (mutual TLS).
    """

    def __init__(self, creds: NodeCredentials, shim_socket: str, container_id: str, *,
                 listen: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        self.creds, self.shim_socket, self.container_id = creds, shim_socket, container_id
        self.criu_port = free_loopback_port()
        self.proxy = SourceProxy(creds, upstream=("127.0.0.1", self.criu_port), listen=listen)
        self._client: ttrpc.Client | None = None
        self._events: AsyncIterator[Any] | None = None

    async def prepare(self) -> int:
        """Check the node and start the proxy; returns its port (the target dials it)."""
        check_node()
        return await self.proxy.start()

    async def dump(self) -> Paused:
        """Ask the shim for the lazy dump; returns at READY. Raises
        :class:`LiveMigrationFailed` (the app runs on here)."""
        self._client = await ttrpc.Client.connect(self.shim_socket)
        self._events = await self._client.server_stream(
            ZEROPOD_SHIM_SERVICE, "LiveMigrate",
            zeropod_shim.LiveMigrateRequest(id=self.container_id,
                                            page_server_port=self.criu_port),
            zeropod_shim.LiveMigrateEvent)
        event = await self._next()
        if event.stage != zeropod_shim.LiveMigrateEvent.READY:
            raise LiveMigrationFailed(f"live dump of {self.container_id}: {event.error}")
        ready_at = event.time.ToDatetime().timestamp() if event.HasField("time") else time.time()
        frozen_s = event.duration.ToTimedelta().total_seconds()
        return Paused(paused_at=ready_at - frozen_s, ready_at=ready_at,
                      image_bytes=int(event.image_bytes))

    async def finished(self) -> float:
        """Wait until every page left (the source process is gone then); returns how long
        the source held the app (freeze to the last page). Raises LiveMigrationFailed."""
        event = await self._next()
        if event.stage != zeropod_shim.LiveMigrateEvent.DONE:
            raise LiveMigrationFailed(f"live migration of {self.container_id} failed while "
                                      f"pages moved: {event.error}")
        return float(event.duration.ToTimedelta().total_seconds())

    async def _next(self) -> Any:
        assert self._events is not None, "dump() first"
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            raise LiveMigrationFailed("the source shim closed the LiveMigrate stream") from None
        except (OSError, ttrpc.RPCError) as exc:
            raise LiveMigrationFailed(f"LiveMigrate of {self.container_id}: {exc}") from exc

    @property
    def bytes_moved(self) -> int:
        """Bytes of pages sent to the target so far."""
        return self.proxy.bytes_down

    async def close(self) -> None:
        await self.proxy.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None


class TargetArrival:
    """The target node's side: the loopback proxy for ``criu lazy-pages`` and the pull.

    :param source_proxy: the source's :class:`SourceHandOver` proxy address.
    :param server_name: the name its certificate is checked against (default: its host).
    """

    def __init__(self, creds: NodeCredentials, source_proxy: tuple[str, int], *,
                 server_name: str = "") -> None:
        self.creds = creds
        self.proxy = TargetProxy(creds, remote=source_proxy, server_name=server_name)
        self.server_name = server_name
        self.port = 0
        self.pending: Path | None = None
        self.image_address = ""
        self._channel: grpc.aio.Channel | None = None

    async def prepare(self, image_address: str) -> int:
        """Check the node, start the proxy and connect to the source's image service at
        ``image_address`` (the TLS handshake before the dump); returns the proxy's
        loopback port."""
        check_node()
        self.port = await self.proxy.start()
        self.image_address = image_address
        # the received image's ports are read with pycriu, whose first import costs ~0.1 s:
        # not inside the freeze
        await asyncio.to_thread(image_ports.preload)
        self._channel = open_channel(image_address, self.creds, self.server_name)
        with contextlib.suppress(asyncio.TimeoutError):  # the pull says what is wrong
            await asyncio.wait_for(self._channel.channel_ready(), CALL_TIMEOUT_S)
        return self.port

    def expect(self, image_root: Path, key: str) -> None:
        """Announce the arrival (``<image root>/.live/<key>/``, see
        :func:`~.annotations.live_key`): the target container may now be created; its shim
        waits in ``Create`` until :meth:`receive` has put the image there."""
        self.pending = image_root / LIVE_PENDING / check_image_id(key)
        self.pending.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def receive(self, source_id: str, *, source_label: str = "") -> Received:
        """Pull the memory-less image of ``source_id`` for the expected container and mark
        it live: its shim restores at once and fetches the pages through this proxy.
        Raises TransferError (nothing left behind; the waiting shim starts fresh once
        :meth:`close` removed the announcement)."""
        assert self.pending is not None, "expect() first"
        snapshot = self.pending / IMAGE_SUBDIR
        started = time.monotonic()
        result = await pull_image(self.image_address, self.creds, source_id, snapshot,
                                  compression="none", channel=self._channel)
        pulled = time.monotonic()
        (snapshot / LIVE_FILE).write_text(json.dumps({"page_server": ["127.0.0.1", self.port]}))
        received = await asyncio.to_thread(mark_received, snapshot,
                                           source_label or f"{self.image_address}/{source_id}",
                                           result)
        log.info("live image received", extra={
            "source": source_id, "raw_bytes": result.raw_bytes,
            "pull_ms": round((pulled - started) * 1e3, 1),
            "mark_ms": round((time.monotonic() - pulled) * 1e3, 1)})
        return received

    async def wait_restored(self, shim_socket: str, target_id: str,
                            timeout_s: float = 60.0) -> float:
        """Poll the target shim until the container runs; time.time() then (restoredAt)."""
        deadline = time.monotonic() + timeout_s
        async with await ttrpc.Client.connect(shim_socket) as client:
            while True:
                status = await client.call(ZEROPOD_SHIM_SERVICE, "GetStatus",
                                           zeropod_shim.ContainerRequest(id=target_id),
                                           zeropod_shim.ContainerStatus,
                                           timeout=CALL_TIMEOUT_S)
                if status.phase == zeropod_shim.RUNNING:
                    return time.time()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{target_id} not restored within {timeout_s} s")
                await asyncio.sleep(0.005)

    async def close(self) -> None:
        """Stop the proxy (after the source's DONE) and drop an arrival nobody took."""
        await self.proxy.close()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self.pending is not None:
            await asyncio.to_thread(shutil.rmtree, self.pending, True)
            self.pending = None
