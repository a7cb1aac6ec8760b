"""Masked directories as external mounts: ~3.7 ms less per masked directory on each restore.

runc masks directories such as ``/proc/acpi`` and ``/sys/firmware`` by mounting an empty,
read-only tmpfs over them. CRIU saves and restores every tmpfs by running ``tar`` and ``gzip``
even when it is empty, which costs ~3.7 ms per tmpfs on every wake-up. These mounts hold
nothing, so zeropod tells CRIU they are *external*: at dump ``external mnt[<path>]:<key>``,
at restore ``external mnt[<key>]:<source>``, where the source is an empty tmpfs that was
mounted **read-only at the superblock**, so whatever CRIU binds at the masked path is empty
and read-only, as runc's mask was. The rest of the container's mounts are left to CRIU.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
KEY_PREFIX = "zpmask"


def masked_tmpfs_dirs(pid: int, masked_paths: Iterable[str]) -> list[str]:
    """Mount points of ``pid``'s mount namespace that are runc's masks of directories."""
    wanted = set(masked_paths)
    found = []
    try:
        with open(f"/proc/{pid}/mountinfo") as mounts:
            for line in mounts:
                fields = line.split()
                fstype = fields[fields.index("-") + 1]
                if fstype == "tmpfs" and fields[4] in wanted and "ro" in fields[5].split(","):
                    found.append(fields[4])
    except (OSError, ValueError):
        return []
    return found


def is_mounted_source(path: Path) -> bool:
    """Whether what ``path`` shows *now* is a read-only tmpfs mounted right there.

    A line in ``/proc/self/mountinfo`` is not enough: a mount over a parent folder (a node whose
    ``/var/lib`` is mounted over after zeropod mounted its source) hides ours while the table
    still lists it, and CRIU then binds a plain folder ("doesn't have a proper root mount").
    So the device of the path itself must be that of a tmpfs mounted at the path.
    """
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    wanted = f"{os.major(device)}:{os.minor(device)}"
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[4] != str(path) or fields[2] != wanted:
                continue
            rest = fields[fields.index("-") + 1:]
            if rest[0] == "tmpfs" and "ro" in rest[2].split(","):
                return True
    return False


def ensure_source(path: Path) -> Path:
    """An empty tmpfs mounted read-only (superblock) at ``path``: what masked dirs bind to."""
    if not is_mounted_source(path):
        path.mkdir(mode=0o555, parents=True, exist_ok=True)
        flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        if _libc.mount(b"zeropod-masked", os.fsencode(path), b"tmpfs", ctypes.c_ulong(flags),
                       b"size=4k,mode=0555") != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")
    return path


def dump_externals(paths: list[str]) -> tuple[str, ...]:
    return tuple(f"mnt[{path}]:{KEY_PREFIX}{i}" for i, path in enumerate(paths))


def restore_externals(paths: list[str], source: Path) -> tuple[str, ...]:
    return tuple(f"mnt[{KEY_PREFIX}{i}]:{source}" for i in range(len(paths)))
