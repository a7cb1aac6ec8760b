"""The TCP ports a checkpointed app listened on, read from its CRIU image.

On the target node no process runs before the first connection, so the ports its activator
must listen on cannot be found in ``/proc``; CRIU's ``files.img`` lists the dumped sockets,
and a listening TCP socket there is an app port. Read with pycriu (manager side only).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

TCP_LISTEN = 10
IPPROTO_TCP = 6


def preload() -> None:
    """Import pycriu now (half a second on a busy node): a live migration reads the ports
    of the arriving image while the app is frozen."""
    with contextlib.suppress(ImportError):
        import pycriu  # noqa: F401


def listening_ports(snapshot: Path) -> tuple[int, ...]:
    """Sorted TCP ports in LISTEN state in the image; () when there is none or no pycriu."""
    try:
        import pycriu
    except ImportError:
        return ()
    try:
        with open(snapshot / "files.img", "rb") as image:
            entries: list[dict[str, Any]] = pycriu.images.load(image)["entries"]
    except (OSError, ValueError, KeyError):
        return ()
    ports = {int(e["isk"]["src_port"]) for e in entries
             if e.get("type") == "INETSK" and e.get("isk", {}).get("proto") == IPPROTO_TCP
             and e["isk"].get("state") == TCP_LISTEN}
    return tuple(sorted(ports))
