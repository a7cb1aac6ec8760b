"""The activator: accepts connections for a sleeping container and hands them over.

While a container is scaled down the redirector sends new connections for its ports to the
activator's ports in the pod's network namespace. For each connection the activator:

1. peeks at what the client sends first: a kubelet probe (a TCP connect-and-close, or an HTTP
   request with ``User-Agent: kube-probe/``) is answered without waking the container;
2. otherwise asks the scaler to restore the container (concurrent connections share one
   restore; one that arrives during a checkpoint waits for it and then restores);
3. connects to the app on loopback inside the pod, retrying every millisecond while it is
   refused, up to the connect timeout;
4. forwards the peeked bytes and proxies both directions until both sides closed (the proxy
   timeout, if set, bounds it).

Connections that arrive after the restore go straight to the app: the redirect is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .netns import socket_in

log = logging.getLogger("zeropod.activator")

PROBE_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
# How long the activator waits for a client to speak before treating it as a client that
# waits for the server (a database protocol): such a connection wakes the container.
PEEK_WAIT_S = 0.05
# A freshly restored app may have a small listen backlog (Python's http.server: 5). A burst of
# first connections from the activator overflows it (SYN cookies, resets), so at most this
# many connections may be waiting for the app's first answer at once; a slot is released at
# the first byte from the app, or after PENDING_HOLD_S for apps that wait for the client.
PENDING_LIMIT = 4
PENDING_HOLD_S = 1.0
_RETRY_S = 0.001


@dataclass(frozen=True)
class ActivatorSettings:
    """Knobs from the container's annotations."""

    probe_detection: bool = True
    probe_buffer_size: int = 1024
    connect_timeout_s: float = 5.0
    proxy_timeout_s: float = 0.0  # 0: unbounded


class Activator:
    """Listens on the activator ports of one container and proxies waking connections."""

    def __init__(self, *, netns_path: str, ports: Sequence[tuple[int, int]],
                 restore: Callable[[], Awaitable[None]],
                 classify: Callable[[bytes], str],
                 settings: ActivatorSettings) -> None:
        """:param ports: (app port, activator port) pairs."""
        self.netns_path, self.ports = netns_path, list(ports)
        self._restore, self._classify, self.settings = restore, classify, settings
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.proxied = 0
        self.probes_answered = 0
        self.last_wake_s = 0.0  # accept -> first answer byte of the last connection that woke
        self._pending = asyncio.Semaphore(PENDING_LIMIT)
        # local ports of our own connections to the app: if one of them reaches us (the
        # redirect came back on meanwhile), it must not wake the container a second time
        self._own_ports: set[int] = set()

    async def start(self) -> None:
        """Listen on every activator port (dual-stack) inside the pod's namespace."""
        for app_port, activator_port in self.ports:
            sock = socket_in(self.netns_path, socket.AF_INET6)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", activator_port))
                sock.listen(512)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise

            def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        port: int = app_port) -> None:
                task = asyncio.get_running_loop().create_task(
                    self._handle(reader, writer, port), name=f"activator-{port}")
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)

            self._servers.append(await asyncio.start_server(handler, sock=sock))
        log.info("activator listening", extra={"ports": self.ports})

    async def close(self) -> None:
        """Stop listening and drop connections that are still waiting or proxied."""
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._servers.clear()

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def _peek(self, reader: asyncio.StreamReader) -> tuple[bytes, bool]:
        """What the client sent first (up to the probe buffer) and whether it already closed."""
        data = b""
        deadline = time.monotonic() + PEEK_WAIT_S
        while len(data) < self.settings.probe_buffer_size and b"\r\n\r\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(
                    reader.read(self.settings.probe_buffer_size - len(data)), remaining)
            except TimeoutError:
                break
            if not chunk:
                return data, True
            data += chunk
        return data, False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      app_port: int) -> None:
        peer = writer.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) > 1 and peer[1] in self._own_ports:
            log.warning("the activator reached itself (the redirect is on again); dropping",
                        extra={"peer": str(peer)})
            writer.close()
            return
        accepted = time.monotonic()
        try:
            peek, closed = await self._peek(reader)
            peeked = time.monotonic()
            # A client that connected and closed without a word is a TCP probe; one that is
            # still waiting quietly may be waiting for the server to speak: that wakes.
            if self.settings.probe_detection and (peek or closed) and \
                    self._classify(peek) == "probe":
                if peek:
                    writer.write(PROBE_OK)
                    with contextlib.suppress(OSError):
                        await writer.drain()
                self.probes_answered += 1
                log.info("probe answered without waking", extra={"peer": str(peer),
                                                                  "peek": peek[:64].decode(
                                                                      "latin-1")})
                return
            if closed and not peek:
                log.info("client closed before sending anything", extra={"peer": str(peer)})
                return  # nothing to forward and nobody to answer
            await self._restore()
            restored = time.monotonic()
            waited = restored - peeked > 0.001  # this connection waited for a restore
            await self._pending.acquire()
            slot = _Slot(self._pending)
            try:
                upstream = await self._connect(app_port, ipv6=_is_ipv6(peer))
                self.proxied += 1
                # info for a connection that waited for the restore: the wake path's breakdown
                log.log(logging.INFO if waited else logging.DEBUG,
                        "proxying a waking connection", extra={
                            "peer": str(peer), "peek_ms": round((peeked - accepted) * 1e3, 2),
                            "restore_wait_ms": round((restored - peeked) * 1e3, 2),
                            "connect_ms": round((time.monotonic() - restored) * 1e3, 2)})
                await self._proxy(reader, writer, upstream, peek, slot,
                                  accepted if waited else None)
            finally:
                slot.release()
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("activator connection ended", extra={"peer": str(peer),
                                                           "error": str(exc)})
        except Exception:
            log.exception("activator connection failed", extra={"peer": str(peer)})
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _connect(self, app_port: int, *, ipv6: bool) -> socket.socket:
        """Connect to the app inside the pod, retrying while it does not listen yet."""
        loop = asyncio.get_running_loop()
        host, family = ("::1", socket.AF_INET6) if ipv6 else ("127.0.0.1", socket.AF_INET)
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            sock = socket_in(self.netns_path, family)
            sock.setblocking(False)
            sock.bind((host, 0))
            own_port = sock.getsockname()[1]
            self._own_ports.add(own_port)
            try:
                await loop.sock_connect(sock, (host, app_port))
                return sock
            except OSError as exc:
                sock.close()
                self._own_ports.discard(own_port)
                if exc.errno != errno.ECONNREFUSED or time.monotonic() >= deadline:
                    raise OSError(exc.errno, f"connecting to the app on {host}:{app_port} "
                                             f"failed: {exc.strerror}") from exc
            await asyncio.sleep(_RETRY_S)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     upstream_sock: socket.socket, first: bytes, slot: _Slot,
                     accepted: float | None) -> None:
        own_port = upstream_sock.getsockname()[1]
        up_reader, up_writer = await asyncio.open_connection(sock=upstream_sock)
        hold = asyncio.get_running_loop().call_later(PENDING_HOLD_S, slot.release)
        try:
            if first:
                up_writer.write(first)
            def first_answer() -> None:
                slot.release()
                if accepted is not None:
                    self.last_wake_s = time.monotonic() - accepted

            copy = asyncio.gather(_pipe(reader, up_writer),
                                  _pipe(up_reader, writer, on_data=first_answer))
            if self.settings.proxy_timeout_s > 0:
                try:
                    await asyncio.wait_for(copy, self.settings.proxy_timeout_s)
                except TimeoutError:
                    log.info("proxied connection cut by the proxy timeout",
                             extra={"timeout_s": self.settings.proxy_timeout_s})
            else:
                await copy
        finally:
            hold.cancel()
            self._own_ports.discard(own_port)
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()


class _Slot:
    """One place in the activator's pending-connections limit, released at most once."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                on_data: Callable[[], None] | None = None) -> None:
    """Copy until EOF, then half-close the other side so it sees the end too."""
    try:
        while chunk := await reader.read(65536):
            if on_data is not None:
                on_data()
                on_data = None
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def _is_ipv6(peer: object) -> bool:
    """True for a genuine IPv6 client (not an IPv4-mapped one on the dual-stack socket)."""
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return ":" in peer[0] and not peer[0].startswith("::ffff:")
    return False
