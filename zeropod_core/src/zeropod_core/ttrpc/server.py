"""The ttrpc server: a registry of services, unix-socket listeners and a graceful shutdown.

containerd connects to each shim's socket and calls ``containerd.task.v2.Task`` methods on it;
the zeropod manager connects to the same kind of server for ``zeropod.shim.v1.Shim``. The
server owns the connections so that shutdown can stop accepting, let running calls finish for a
grace period (a ``Shutdown`` call must get its answer before the shim exits) and then close
everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Mapping
from types import TracebackType

from zeropod_core.ttrpc._connection import ServerConnection
from zeropod_core.ttrpc.service import Method, method_table

log = logging.getLogger("zeropod.ttrpc.server")


class Server:
    """Serves registered services on unix sockets and already-connected sockets.

    Usage::

        server = Server()
        server.register("containerd.task.v2.Task", service_methods(TASK, TaskService()))
        await server.serve_unix("/run/containerd/s/abc")
        ...
        await server.shutdown(grace=5)
    """

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Method]] = {}
        self._listeners: list[tuple[asyncio.Server, str, int | None]] = []
        self._connections: dict[ServerConnection, asyncio.Task[None]] = {}
        self._closing = False
        self._counter = 0

    def register(self, service: str, methods: Mapping[str, Method]) -> None:
        """Add a service; registering the same name twice is a bug (Go panics on it too)."""
        if service in self._services:
            raise ValueError(f"duplicate service {service} registered")
        self._services[service] = method_table(methods)

    @property
    def services(self) -> Mapping[str, Mapping[str, Method]]:
        return self._services

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def serve_unix(self, path: str | os.PathLike[str], *, backlog: int = 100) -> None:
        """Listen on a unix socket at ``path`` (a stale socket file there is replaced).

        Returns once listening; connections are served in the background until
        :meth:`shutdown`. A leading NUL byte in ``path`` means an abstract socket. Go dials an
        abstract ``"\\x00name"`` with a trailing NUL in the name, so to be reachable at the
        legacy address ``ctr shim`` tries, bind ``"\\0/containerd-shim/<ns>/<id>/shim.sock\\0"``.
        """
        if self._closing:
            raise RuntimeError("ttrpc server is shut down")
        address = os.fspath(path)
        listener = await asyncio.start_unix_server(self._accept, path=address, backlog=backlog)
        inode = None
        if not address.startswith("\0"):
            inode = os.stat(address).st_ino
        self._listeners.append((listener, address, inode))
        log.debug("ttrpc server listening", extra={"address": address})

    async def serve_socket(self, sock: socket.socket) -> None:
        """Serve one already-connected socket (e.g. half of a socketpair) in the background."""
        if self._closing:
            raise RuntimeError("ttrpc server is shut down")
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._start(reader, writer)

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one connection given as asyncio streams, until it ends."""
        task = self._start(reader, writer)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, let running calls finish for up to ``grace`` seconds, close all.

        Requests that arrive meanwhile on open connections get Unavailable ("ttrpc: server
        closed"). Calls still running after the grace period are cancelled.
        """
        self._closing = True
        for listener, address, inode in self._listeners:
            listener.close()
            await listener.wait_closed()
            _unlink_socket(address, inode)
        self._listeners.clear()
        connections = list(self._connections)
        busy = [asyncio.ensure_future(conn.wait_idle()) for conn in connections if conn.active]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=grace)
            for waiter in pending:
                waiter.cancel()
            if pending:
                log.warning(
                    "ttrpc: %d connection(s) still busy after %.1fs, cancelling their calls",
                    len(pending),
                    grace,
                )
        await asyncio.gather(*(conn.close() for conn in connections), return_exceptions=True)
        tasks = list(self._connections.values())
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # --- connections ---------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        await self.serve_connection(reader, writer)

    def _start(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> asyncio.Task[None]:
        self._counter += 1
        conn = ServerConnection(
            reader,
            writer,
            self._services,
            accepting=lambda: not self._closing,
            name=f"conn-{self._counter}",
        )
        task = asyncio.create_task(conn.run(), name=f"ttrpc {conn.name}")
        self._connections[conn] = task
        task.add_done_callback(lambda _: self._connections.pop(conn, None))
        return task


def _unlink_socket(address: str, inode: int | None) -> None:
    """Remove our socket file, unless something else has replaced it since."""
    if inode is None:
        return
    with contextlib.suppress(OSError):
        info = os.stat(address)
        if stat.S_ISSOCK(info.st_mode) and info.st_ino == inode:
            os.unlink(address)
