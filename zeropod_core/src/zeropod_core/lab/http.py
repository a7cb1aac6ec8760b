"""A tiny HTTP/1.0 client that runs from inside a network namespace and times each request.

Timings matter here (wake-up latency is the product), so the client does as little as
possible: one socket made in the namespace, connect, one request, read to EOF.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import socket_in


@dataclass(frozen=True)
class HttpResponse:
    """A complete response and how long it took from connect to the last byte."""

    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float
    connect_s: float

    def json(self) -> Any:
        return json.loads(self.body)


class HttpError(Exception):
    """The request failed: refused, timed out, or the answer was not HTTP."""


def http_get(netns_path: str | Path, host: str, port: int, path: str = "/", *,
             timeout: float = 5.0, headers: dict[str, str] | None = None) -> HttpResponse:
    """GET ``path`` from ``host:port`` as a client inside ``netns_path``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket_in(netns_path, family)
    request_headers = {"Host": host, "User-Agent": "zeropod-lab", **(headers or {})}
    request = f"GET {path} HTTP/1.0\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request_headers.items()) + "\r\n"
    try:
        sock.settimeout(timeout)
        start = time.monotonic()
        sock.connect((host, port))
        connected = time.monotonic()
        sock.sendall(request.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        end = time.monotonic()
    except OSError as exc:
        raise HttpError(f"GET http://{host}:{port}{path}: {exc}") from exc
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HttpError(f"GET http://{host}:{port}{path}: not an HTTP response: {raw[:80]!r}")
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    return HttpResponse(int(parts[1]), {k.strip().lower(): v.strip() for k, v in fields.items()},
                        body, end - start, connected - start)


def wait_for_http(netns_path: str | Path, host: str, port: int, path: str = "/", *,
                  deadline_s: float = 10.0, interval_s: float = 0.002) -> HttpResponse:
    """Retry :func:`http_get` until it answers or ``deadline_s`` passes (for start-ups)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return http_get(netns_path, host, port, path, timeout=max(0.05, end - time.monotonic()))
        except HttpError:
            if time.monotonic() >= end:
                raise
            time.sleep(interval_s)
