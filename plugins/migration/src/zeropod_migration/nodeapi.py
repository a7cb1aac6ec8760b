"""The shim's client of the manager's node API (``POST /v1/migration`` on a unix socket).

One request per connection, JSON in and out, standard library only (the shim imports it).
The answer never raises: a manager that is not there, is too slow or refuses means "no
migration" and the container starts fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("zeropod.migration.nodeapi")

PATH = "/v1/migration"
# The manager bounds its own waits (finding the Migration, the source's image, the pull);
# this only guards against a manager that hangs.
TIMEOUT_S = 150.0


async def ask_manager(socket_path: str, request: Mapping[str, Any],
                      timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """The manager's JSON answer, or ``{"image": False, "reason": ...}`` on any failure."""
    try:
        return await asyncio.wait_for(_post(socket_path, request), timeout_s)
    except FileNotFoundError:
        return {"image": False, "reason": f"no manager node API at {socket_path}"}
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
        log.warning("asking the manager about a migration failed",
                    extra={"socket": socket_path, "error": str(exc) or type(exc).__name__})
        return {"image": False, "reason": f"the manager did not answer: {exc!r}"}


async def _post(socket_path: str, request: Mapping[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        body = json.dumps(dict(request)).encode()
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: zeropod-manager\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, payload = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"the manager answered {head[:80]!r}: {payload[:200]!r}")
    answer = json.loads(payload)
    if not isinstance(answer, dict):
        raise ValueError("the manager's answer is not a JSON object")
    return answer
