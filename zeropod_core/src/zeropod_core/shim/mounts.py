"""Mount the container's rootfs from the mounts containerd sends in ``Create``, and undo it.

Done with ``mount(2)`` through ctypes rather than by exec'ing ``mount``: it is on every
container start's critical path. Options are split into mount flags and the filesystem's data
string the way containerd's ``mount_linux.go`` does.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_SYNCHRONOUS, MS_REMOUNT, MS_MANDLOCK, MS_DIRSYNC = 0x10, 0x20, 0x40, 0x80
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 0x400, 0x800, 0x1000, 0x4000
MS_PRIVATE, MS_SLAVE, MS_SHARED, MS_RELATIME, MS_STRICTATIME = (
    1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 24)
MNT_DETACH = 2

# option -> (clear?, flag)
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS), "atime": (True, MS_NOATIME), "bind": (False, MS_BIND),
    "defaults": (False, 0), "dev": (True, MS_NODEV), "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC), "exec": (True, MS_NOEXEC), "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME), "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME), "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK), "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME), "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC), "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT), "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME), "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}
_PROPAGATION = {"private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "slave": MS_SLAVE,
                "rslave": MS_SLAVE | MS_REC, "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC}


@dataclass(frozen=True)
class Mount:
    """One entry of ``CreateTaskRequest.rootfs``."""

    type: str
    source: str
    options: Sequence[str]


def _syscall_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} {source} on {target} ({data!r}): {os.strerror(err)}")


def parse_options(options: Sequence[str]) -> tuple[int, int, str]:
    """Split options into (flags, propagation flags, data)."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if option in _FLAGS:
            clear, flag = _FLAGS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


def mount(m: Mount, target: str) -> None:
    """Mount ``m`` on ``target``, including the read-only remount a bind mount needs."""
    flags, propagation, data = parse_options(m.options)
    fstype = "" if m.type == "bind" else m.type
    if m.type == "bind":
        flags |= MS_BIND
    _syscall_mount(m.source, target, fstype, flags & ~MS_RDONLY if flags & MS_BIND else flags,
                   data)
    if flags & MS_BIND and flags & MS_RDONLY:
        _syscall_mount("", target, "", flags | MS_REMOUNT, "")
    if propagation:
        _syscall_mount("", target, "", propagation, "")


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount every entry on ``target`` in order; undo the ones done if one fails."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except OSError:
        for _ in range(done):
            unmount_all(target)
        raise


def unmount_all(target: str) -> None:
    """Unmount ``target`` until nothing is mounted there any more (stacked mounts included)."""
    while True:
        if _libc.umount2(target.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise OSError(err, f"umount {target}: {os.strerror(err)}")
