"""The manager's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` and ``/status`` (JSON).

A small asyncio HTTP/1.1 server (one request per connection): GET for the read-only
endpoints, and POST with a JSON body for the node API the shims call on the manager's unix
socket. The manager needs a handful of endpoints and no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger("zeropod.manager.http")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
# POST handlers get the request body
PostHandler = Callable[[bytes], Awaitable[tuple[int, str, bytes]]]
MAX_BODY = 1 << 20
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 500: "Internal Error", 503: "Service Unavailable"}


def json_body(data: Any) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(data, indent=1, default=str).encode() + b"\n"


class HttpServer:
    """Serves ``routes`` (path -> GET handler) and ``post_routes`` (path -> POST handler)
    on ``host:port`` or a unix socket."""

    def __init__(self, routes: Mapping[str, Handler],
                 post_routes: Mapping[str, PostHandler] | None = None) -> None:
        self.routes = dict(routes)
        self.post_routes = dict(post_routes or {})
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def start_unix(self, path: str) -> None:
        """Serve on a unix socket (mode 0600: root's shims are the only clients)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._serve, path)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            first, _, headers = request.decode("latin-1").partition("\r\n")
            method, path, *_ = first.split()
            path = path.split("?", 1)[0]
            handler: Callable[[], Awaitable[tuple[int, str, bytes]]] | None = None
            if method in ("GET", "HEAD"):
                handler = self.routes.get(path)
            elif method == "POST" and path in self.post_routes:
                length = _content_length(headers)
                if length > MAX_BODY:
                    raise _Refused(413, "request body too large")
                data = await asyncio.wait_for(reader.readexactly(length), 10)
                handler = functools.partial(self.post_routes[path], data)
            elif method == "POST" and path not in self.routes:
                handler = None
            else:
                raise _Refused(405, f"{method} is not allowed on {path}")
            if handler is None:
                status, kind, body = 404, "text/plain", b"not found\n"
            else:
                try:
                    status, kind, body = await handler()
                except Exception:
                    log.exception("handler failed", extra={"path": path})
                    status, kind, body = 500, "text/plain", b"internal error\n"
            _answer(writer, status, kind, b"" if method == "HEAD" else body, len(body))
            await writer.drain()
        except _Refused as exc:
            _answer(writer, exc.status, "text/plain", exc.text.encode() + b"\n")
            with contextlib.suppress(OSError):
                await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _content_length(headers: str) -> int:
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise _Refused(400, f"invalid Content-Length {value.strip()!r}")
            return int(value)
    return 0


def _answer(writer: asyncio.StreamWriter, status: int, kind: str, body: bytes,
            length: int | None = None) -> None:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n").encode()
    writer.write(head + body)
