"""A TCP relay inside a lab node's network namespace that can break a connection midway.

Why: a migration's image transfer that breaks in the middle (the source node reboots, a link
goes down) must fail the ``Migration`` and leave nothing behind. To break the *real* source
manager's stream at a known point, without a fault switch in the product, the lab puts this
relay between the nodes: the source manager's image service listens on ``127.0.0.1:<port>``
of its node, the relay on ``<node IP>:<same port>`` (the address the manager advertises),
and it passes bytes through unchanged (TLS stays end to end) until :meth:`CutProxy.cut_after`
arms it: then the next connection is reset after that many bytes went from the server to the
client. Both sockets are made inside the node's namespace (:func:`~zeropod_core.netns.socket_in`);
the threads that pump them are this process's.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..netns import socket_in

CHUNK = 64 * 1024


@dataclass
class CutProxy:
    """Relays ``listen`` to ``upstream``, both addresses inside ``netns``.

    :ivar connections: connections accepted so far.
    :ivar cuts: the server-to-client byte counts at which connections were reset.
    """

    netns: str | Path
    listen: tuple[str, int]
    upstream: tuple[str, int]
    connections: int = 0
    cuts: list[int] = field(default_factory=list)
    _armed: int | None = None
    _server: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set[socket.socket] = field(default_factory=set)

    def start(self) -> CutProxy:
        server = socket_in(self.netns)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, name="cutproxy-accept", daemon=True).start()
        return self

    def cut_after(self, server_bytes: int) -> None:
        """Reset the next connection once ``server_bytes`` went from upstream to the client."""
        if server_bytes <= 0:
            raise ValueError(f"server_bytes must be positive, got {server_bytes}")
        with self._lock:
            self._armed = server_bytes

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()

    def __enter__(self) -> CutProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        server = self._server
        while server is not None:
            try:
                client, _ = server.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket_in(self.netns)
                upstream.connect(self.upstream)
            except OSError:
                upstream.close()
                _reset(client)  # the server is down: the client sees a refused stream
                continue
            with self._lock:
                self.connections += 1
                limit, self._armed = self._armed, None
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, None),
                             name="cutproxy-up", daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, limit),
                             name="cutproxy-down", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        moved = 0
        try:
            while True:
                want = CHUNK if limit is None else min(CHUNK, limit - moved)
                data = source.recv(want)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
                moved += len(data)
                if limit is not None and moved >= limit:
                    with self._lock:
                        self.cuts.append(moved)
                    _reset(source)
                    _reset(sink)
                    return
        except OSError:
            _reset(source)
            _reset(sink)
        finally:
            with self._lock:
                self._open.difference_update((source, sink))


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the peer sees the connection break, not end.
    The shutdown first wakes the other pump thread's ``recv`` on the same socket (a plain
    close would wait for it)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
