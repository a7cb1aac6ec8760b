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
import socket
import ssl
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .tls import NodeCredentials

log = logging.getLogger("zeropod.migration.pageproxy")

BUFFER = 4 << 20  # send buffer per connection before reading pauses (CRIU's pipes)


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


class _Pipe(asyncio.Protocol):
    """One end of a proxied connection: what it receives goes straight to its peer's
    transport from the callback (no stream reader, no task hop: CRIU's lazy pages are
    many small request/response round trips, so latency per hop is what counts). Back
    pressure: when the peer's send buffer fills, this end stops reading."""

    def __init__(self, count: Callable[[int], None]) -> None:
        self.count = count
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self._early: list[bytes] = []
        self._eof = False
        self.made = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=BUFFER)
        self.transport = transport
        self.made.set()

    def link(self, peer: _Pipe) -> None:
        """Join with ``peer``; what arrived before goes out now."""
        self.peer = peer
        assert peer.transport is not None
        for data in self._early:
            peer.transport.write(data)
        self._early.clear()
        if self._eof:
            _end(peer.transport)

    def data_received(self, data: bytes) -> None:
        self.count(len(data))
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self.peer is not None and self.peer.transport is not None:
            _end(self.peer.transport)
        # keep the other direction open; a TLS transport cannot (asyncio closes it)
        return self.transport is not None and \
            self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            if exc is None:
                self.peer.transport.close()
            else:
                # broken (reset, aborted): the other side must see an error, not a clean
                # end. CRIU's page server takes an end of stream for "the target has every
                # page" and kills the source app; a reset fails the dump and thaws it.
                _reset(self.peer.transport)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def _reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset (SO_LINGER 0), so the peer's next read fails."""
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _end(transport: asyncio.Transport) -> None:
    """Pass an end of stream on: half-close where the transport can, else close."""
    with contextlib.suppress(Exception):
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()


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
    _transports: set[asyncio.Transport] = field(default_factory=set)

    async def _open_upstream(self, pipe: _Pipe) -> None:
        """Connect ``pipe`` to the upstream (its transport is set once this returns)."""
        raise NotImplementedError

    def _count_up(self, n: int) -> None:
        self.bytes_up += n

    def _count_down(self, n: int) -> None:
        self.bytes_down += n

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, self.listen_host,
                                                self.listen_port, ssl=self.listen_tls)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    def _accepted(self) -> _Pipe:
        client = _Pipe(self._count_up)
        self.connections += 1
        task = asyncio.get_running_loop().create_task(self._connect(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def _connect(self, client: _Pipe) -> None:
        await client.made.wait()  # the TLS handshake of an accepted connection
        assert client.transport is not None
        upstream = _Pipe(self._count_down)
        try:
            await self._open_upstream(upstream)
        except (OSError, ssl.SSLError) as exc:
            log.warning("page-server proxy cannot reach its upstream",
                        extra={"error": str(exc)})
            client.transport.close()
            return
        assert upstream.transport is not None
        self._transports.update((client.transport, upstream.transport))
        client.link(upstream)
        upstream.link(client)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self._transports:
            transport.close()
        self._transports.clear()


class SourceProxy(_Proxy):
    """On the source node: mutual TLS from the target's proxy -> CRIU's page server."""

    def __init__(self, creds: NodeCredentials, *, upstream: str | tuple[str, int],
                 listen: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        """:param upstream: CRIU's page server: a unix socket path or (host, port)."""
        super().__init__(listen[0], listen[1], tls_context(creds, server=True), None)
        self.upstream = upstream

    async def _open_upstream(self, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(self.upstream, str):
            await loop.create_unix_connection(lambda: pipe, self.upstream)
        else:
            await loop.create_connection(lambda: pipe, *self.upstream)


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

    async def _open_upstream(self, pipe: _Pipe) -> None:
        await asyncio.get_running_loop().create_connection(
            lambda: pipe, *self.remote, ssl=self.connect_tls, server_hostname=self.server_name)
