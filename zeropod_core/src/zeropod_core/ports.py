"""Which TCP ports a container listens on, found from ``/proc``.

Used when the ``ports-map`` annotation does not say which ports wake the container: the LISTEN
sockets in the container's network namespace that belong to one of its processes (init and
all its descendants), so sockets of other containers of the same pod are not taken.
"""

from __future__ import annotations

import contextlib
import os

_LISTEN = "0A"


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError), open(
                    f"/proc/{current}/task/{task}/children") as children:
                pending.extend(int(child) for child in children.read().split())
    return found


def _socket_inodes(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _listening(pid: int) -> dict[int, int]:
    """inode -> port of every LISTEN TCP socket in ``pid``'s network namespace."""
    sockets = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == _LISTEN:
                        sockets[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
        except (OSError, StopIteration):
            continue
    return sockets


def listening_ports(pid: int) -> list[int]:
    """Sorted TCP ports the processes of the container whose init is ``pid`` listen on."""
    owned = _socket_inodes(_descendants(pid))
    return sorted({port for inode, port in _listening(pid).items() if inode in owned})
