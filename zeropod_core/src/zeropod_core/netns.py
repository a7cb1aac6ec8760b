"""Sockets inside another network namespace, made from a thread that joined it.

The network namespace is a per-thread attribute (``setns(2)`` with ``CLONE_NEWNET`` changes
only the calling thread), and a socket stays in the namespace it was created in. So a short
thread that joins the pod's namespace and creates a socket gives the shim (or a test) a socket
in the pod while everything else stays in the host namespace, without ``ip netns exec``.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def run_in_netns(netns_path: str | Path, func: Callable[[], T]) -> T:
    """Call ``func`` in a thread that has joined the network namespace at ``netns_path``."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(func())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="netns-join")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def socket_in(netns_path: str | Path, family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in the network namespace at ``netns_path`` ("" = our own)."""
    if not netns_path:
        return socket.socket(family, kind)
    return run_in_netns(netns_path, lambda: socket.socket(family, kind))
