"""Network namespace helpers over ``setns(2)`` (standard library only).

The network namespace is a per-thread attribute, and a socket stays in the namespace it was
created in. So code can work inside a pod's namespace from a short-lived thread that joins
it, without ``ip netns exec`` (a process per call, and it also unshares the mount namespace,
which hides a bpffs mounted under ``/sys``). The loader, a single-threaded helper process,
joins the pod namespace with :func:`enter` for good.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import sys
import threading

# the one implementation of "run a function inside a namespace", re-exported here
from zeropod_core.netns import run_in_netns as run_in_netns

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace fd: returns its CLONE_NEW* type
SO_NETNS_COOKIE = 71

_libc = ctypes.CDLL(None, use_errno=True)


def open_netns(path: str | os.PathLike[str]) -> int:
    """Open ``path`` and check that it is a network namespace; return the fd.

    Raises :class:`FileNotFoundError` when it is gone, or when the path is left over after the
    namespace was unmounted (a plain file or an unrelated namespace type).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, f"not a network namespace: {os.fspath(path)}")
    return fd


def is_netns(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` currently names a live network namespace."""
    try:
        os.close(open_netns(path))
    except OSError:
        return False
    return True


HOST_NETNS_REFERENCES = ("/proc/self/ns/net", "/proc/1/ns/net")


def is_host_netns(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is the node's network namespace, where nothing may be attached.

    A host-network pod has no namespace of its own: attaching there would redirect the
    node's own traffic for the app ports. The node's namespace is the caller's own (the shim
    and the loader run in it) or init's, when init's is readable.
    """
    try:
        target = os.stat(path)
    except OSError:
        return False
    for reference in HOST_NETNS_REFERENCES:
        try:
            ref = os.stat(reference)
        except OSError:
            continue
        if (target.st_dev, target.st_ino) == (ref.st_dev, ref.st_ino):
            return True
    return False


def enter(fd: int) -> None:
    """Move the calling thread into the network namespace behind ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def current_cookie() -> int:
    """The cookie of the calling thread's network namespace (unique for the boot, never reused).

    The loader stores it next to the pins: a pin directory found again for a namespace with a
    different cookie was left by a namespace that is gone, whatever its inode number says.
    Falls back to the namespace's inode number on kernels without ``SO_NETNS_COOKIE`` (< 5.14).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        except OSError:
            return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino
    return int.from_bytes(raw, sys.byteorder)
