"""The manager's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` and ``/status`` (JSON).

A small asyncio HTTP/1.1 server for GET requests (one request per connection): the manager
needs three read-only endpoints and no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger("zeropod.manager.http")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Error",
            503: "Service Unavailable"}


def json_body(data: Any) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(data, indent=1, default=str).encode() + b"\n"


class HttpServer:
    """Serves ``routes`` (path -> handler) on ``host:port``."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = path.split("?", 1)[0]
            handler = self.routes.get(path)
            if method not in ("GET", "HEAD"):
                status, kind, body = 405, "text/plain", b"only GET\n"
            elif handler is None:
                status, kind, body = 404, "text/plain", b"not found\n"
            else:
                try:
                    status, kind, body = await handler()
                except Exception:
                    log.exception("handler failed", extra={"path": path})
                    status, kind, body = 500, "text/plain", b"internal error\n"
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
