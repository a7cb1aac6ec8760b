"""Small tmpfs mounts as external mounts: ~3.7 ms less per tmpfs on every dump and restore.

CRIU saves a tmpfs by running ``tar`` and ``gzip`` over it and restores it the same way, even
when it is empty; a containerd container has three (``/dev``, ``/dev/shm``, ``/run``), which
is ~11 ms of every wake-up and every checkpoint. Most of them hold nothing but structure:
``/dev`` has runc's device nodes, symlinks and the mount points below it; ``/dev/shm`` and
``/run`` are usually empty. Such a tmpfs (only directories, symlinks, device nodes and empty
regular files) is dumped as an *external* mount, and before the restore the plugin mounts a
fresh tmpfs with the same options, recreates that structure in it, and CRIU binds it in place.
A tmpfs holding data (a non-empty file, a socket, a FIFO) is left to CRIU, so nothing the app
wrote is lost. The mount's flags (``nosuid``, ``nodev``, ...) are set on the fresh mount, and
a bind mount inherits them.

Dump: ``external mnt[<path>]:zptmpfs<n>``; restore: ``external mnt[zptmpfs<n>]:<host dir>``,
both written to the container's CRIU config, so a ``runc restore`` fallback uses them too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "zptmpfs"
# Scanning stops there: a tmpfs this large is not the structure-only kind.
MAX_ENTRIES = 512
_MOUNT_FLAGS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "noatime": 0x400,
                "nodiratime": 0x800, "relatime": 0x200000, "strictatime": 0x1000000}
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Entry:
    """One thing inside the tmpfs (path relative to its root)."""

    path: str
    kind: str  # "dir", "link", "chr", "blk", "file"
    mode: int
    uid: int
    gid: int
    rdev: int = 0
    target: str = ""


@dataclass(frozen=True)
class Tmpfs:
    """A tmpfs of the container that can be recreated instead of dumped."""

    path: str
    mount_options: str
    super_options: str
    root_mode: int
    root_uid: int
    root_gid: int
    entries: tuple[Entry, ...]


def _mounts(pid: int) -> Iterator[tuple[str, str, str, str, str, str]]:
    """(device, root, mount point, mount options, fstype, super options) of ``pid``."""
    with open(f"/proc/{pid}/mountinfo") as mountinfo:
        for line in mountinfo:
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            if len(fields) >= 6 and len(rest) >= 3:
                yield fields[2], fields[3], fields[4], fields[5], rest[0], rest[2]


def _scan(root: Path, device: int) -> list[Entry] | None:
    """The entries below ``root`` on ``device``; None if anything holds data."""
    entries: list[Entry] = []
    stack = [root]
    prefix = len(str(root).rstrip("/")) + 1  # os.path.relpath is ~100 times slower
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as listing:
            for item in listing:
                info = item.stat(follow_symlinks=False)
                rel = item.path[prefix:]
                mode = stat.S_IMODE(info.st_mode)
                if stat.S_ISDIR(info.st_mode):
                    entries.append(Entry(rel, "dir", mode, info.st_uid, info.st_gid))
                    if info.st_dev == device:  # a mount point's contents are not ours
                        stack.append(Path(item.path))
                elif info.st_dev != device:
                    # a file bind-mounted over an entry: the entry underneath is unknown
                    return None
                elif stat.S_ISLNK(info.st_mode):
                    entries.append(Entry(rel, "link", mode, info.st_uid, info.st_gid,
                                         target=os.readlink(item.path)))
                elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                    kind = "chr" if stat.S_ISCHR(info.st_mode) else "blk"
                    entries.append(Entry(rel, kind, mode, info.st_uid, info.st_gid,
                                         rdev=info.st_rdev))
                elif stat.S_ISREG(info.st_mode) and info.st_size == 0:
                    entries.append(Entry(rel, "file", mode, info.st_uid, info.st_gid))
                else:
                    return None
                if len(entries) > MAX_ENTRIES:
                    return None
    return entries


def structural_tmpfs(pid: int, skip: set[str], externals: set[str]) -> list[Tmpfs]:
    """The container's tmpfs mounts that hold only structure (see the module doc).

    ``skip``: mount points handled otherwise (runc's masked directories); ``externals``: mount
    points the dump marks external anyway (runc's masked files, bound from ``/dev/null`` of
    ``/dev``). Only whole tmpfs mounts (root ``/``) that no other mount binds from are
    candidates.
    """
    mounts = list(_mounts(pid))
    found = []
    for device, root, point, options, fstype, super_options in mounts:
        if fstype != "tmpfs" or root != "/" or point in skip:
            continue
        # CRIU would restore another mount showing part of this tmpfs as a bind of its own
        # copy, which no longer exists: leave such a tmpfs to CRIU
        if any(d == device and p != point and p not in externals
               for d, _, p, _, _, _ in mounts):
            continue
        directory = Path(f"/proc/{pid}/root{point}")
        try:
            info = directory.stat()
            entries = _scan(directory, info.st_dev)
        except OSError:
            continue
        if entries is None:
            continue
        found.append(Tmpfs(point, options, super_options, stat.S_IMODE(info.st_mode),
                           info.st_uid, info.st_gid, tuple(entries)))
    return found


def dump_externals(mounts: list[Tmpfs]) -> tuple[str, ...]:
    return tuple(f"mnt[{m.path}]:{KEY_PREFIX}{i}" for i, m in enumerate(mounts))


def restore_externals(mounts: list[Tmpfs], base: Path) -> tuple[str, ...]:
    return tuple(f"mnt[{KEY_PREFIX}{i}]:{base / str(i)}" for i in range(len(mounts)))


def _mount_tmpfs(target: Path, tmpfs: Tmpfs) -> None:
    flags = 0
    for option in tmpfs.mount_options.split(","):
        flags |= _MOUNT_FLAGS.get(option, 0)
    data = ",".join(o for o in tmpfs.super_options.split(",") if o not in ("rw", "ro"))
    read_only = flags & _MOUNT_FLAGS["ro"]
    # populated first, then made read-only if the container's was
    if _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs",
                   ctypes.c_ulong(flags & ~read_only), data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def _remount_ro(target: Path, tmpfs: Tmpfs) -> None:
    flags = 0x20 | 0x1000 | _MOUNT_FLAGS["ro"]  # MS_REMOUNT | MS_BIND | MS_RDONLY
    for option in tmpfs.mount_options.split(","):
        flags |= _MOUNT_FLAGS.get(option, 0)
    if _libc.mount(None, os.fsencode(target), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"remount {target} read-only: {os.strerror(err)}")


def _populate(root: Path, tmpfs: Tmpfs) -> None:
    os.chmod(root, tmpfs.root_mode)
    os.chown(root, tmpfs.root_uid, tmpfs.root_gid)
    for entry in tmpfs.entries:
        path = root / entry.path
        if entry.kind == "dir":
            path.mkdir()
        elif entry.kind == "link":
            os.symlink(entry.target, path)
        elif entry.kind == "file":
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC))
        else:
            kind = stat.S_IFCHR if entry.kind == "chr" else stat.S_IFBLK
            os.mknod(path, kind | entry.mode, entry.rdev)
        os.lchown(path, entry.uid, entry.gid)
        if entry.kind != "link":
            os.chmod(path, entry.mode)


def prepare(base: Path, mounts: list[Tmpfs]) -> None:
    """Mount and fill a fresh tmpfs for each of ``mounts`` at ``base/<n>``."""
    unmount_all(base)
    for index, tmpfs in enumerate(mounts):
        target = base / str(index)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        _mount_tmpfs(target, tmpfs)
        _populate(target, tmpfs)
        if "ro" in tmpfs.mount_options.split(","):
            _remount_ro(target, tmpfs)


def unmount_all(base: Path) -> None:
    """Detach every mount below ``base`` (before anything removes files there: a restored
    container's mount shares the superblock, an rmtree would empty the container's too)."""
    prefix = str(base).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        _libc.umount2(os.fsencode(point), 2)  # MNT_DETACH
    with contextlib.suppress(OSError):
        for child in base.iterdir():
            with contextlib.suppress(OSError):
                child.rmdir()
