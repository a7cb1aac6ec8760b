"""The page-server proxy of live migration: CRIU's page traffic over the cluster's mutual TLS.

In a live migration the target's ``criu lazy-pages`` fetches memory pages from the source's
CRIU page server while the app already runs on the target. CRIU's own TLS proved unreliable
upstream, so, as upstream does, CRIU speaks plain TCP to a proxy on its own node and the two
proxies speak TLS to each other::

    criu lazy-pages --page-server --address 127.0.0.1 --port P
        -> TargetProxy (127.0.0.1:P, plain)  ==mutual TLS 1.3==>  SourceProxy (node:Q)
        -> CRIU's page server on the source (127.0.0.1 or a unix socket)

Both ends use the node certificates of :mod:`.tls`; unlike grpcio, Python's ``ssl`` lets this
require TLS 1.3. Each accepted connection gets its own upstream connection; bytes are copied
both ways until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .tls import NodeCredentials

log = logging.getLogger("zeropod.migration.pageproxy")

BUFFER = 1 << 20


def tls_context(creds: NodeCredentials, *, server: bool) -> ssl.SSLContext:
    """A TLS 1.3-only context with this node's pair, trusting only the cluster CA; a server
    requires a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=creds.ca_pem.decode())
    with tempfile.TemporaryDirectory(prefix="zeropod-tls-") as folder:
        cert, key = Path(folder) / "c.pem", Path(folder) / "k.pem"
        cert.write_bytes(creds.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(creds.key_pem)
        context.load_cert_chain(cert, key)
    if server:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                count: Callable[[int], None]) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            count(len(data))  # as it flows: a reader of the totals need not wait for the end
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


@dataclass
class _Proxy:
    """A listener that connects every accepted connection to an upstream and copies bytes."""

    listen_host: str
    listen_port: int
    listen_tls: ssl.SSLContext | None
    connect_tls: ssl.SSLContext | None
    server_name: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    def _count_up(self, n: int) -> None:
        self.bytes_up += n

    def _count_down(self, n: int) -> None:
        self.bytes_down += n

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accepted, self.listen_host,
                                                  self.listen_port, ssl=self.listen_tls)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    async def _accepted(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await self._open_upstream()
            except (OSError, ssl.SSLError) as exc:
                log.warning("page-server proxy cannot reach its upstream",
                            extra={"error": str(exc)})
                writer.close()
                return
            await asyncio.gather(_pump(reader, up_writer, self._count_up),
                                 _pump(up_reader, writer, self._count_down))
            for w in (writer, up_writer):
                w.close()
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SourceProxy(_Proxy):
    """On the source node: mutual TLS from the target's proxy -> CRIU's page server."""

    def __init__(self, creds: NodeCredentials, *, upstream: str | tuple[str, int],
                 listen: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        """:param upstream: CRIU's page server: a unix socket path or (host, port)."""
        super().__init__(listen[0], listen[1], tls_context(creds, server=True), None)
        self.upstream = upstream

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.upstream, str):
            return await asyncio.open_unix_connection(self.upstream, limit=BUFFER)
        return await asyncio.open_connection(*self.upstream, limit=BUFFER)


class TargetProxy(_Proxy):
    """On the target node: plain TCP on loopback for ``criu lazy-pages`` -> mutual TLS to the
    source's proxy."""

    def __init__(self, creds: NodeCredentials, *, remote: tuple[str, int],
                 server_name: str = "") -> None:
        """:param server_name: the name the source's certificate is checked against
            (default: the remote host)."""
        super().__init__("127.0.0.1", 0, None, tls_context(creds, server=False),
                         server_name or remote[0])
        self.remote = remote

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.remote, ssl=self.connect_tls,
                                             server_hostname=self.server_name, limit=BUFFER)
