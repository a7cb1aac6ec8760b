"""The bpf filesystem that holds each pod's pins: mount it, and remove a pod's pins.

Pins are what lets a short-lived loader hand maps to the long-lived shim, and they outlive
every process: ``ip netns del`` drops the filters, but pinned maps and programs stay until
unlinked. So the pin directory of a pod is removed explicitly when its sandbox goes away.

The default root is ``/run/zeropod/bpf``, not ``/sys/fs/bpf``: ``ip netns exec`` remounts
``/sys`` and would hide pins there (measured), and a private bpffs instance keeps zeropod's
pins apart from other tools'. Standard library only (the shim uses this module).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

from .maps import PIN_NAMES

BPF_FS_MAGIC = 0xCAFE4A11

log = logging.getLogger("zeropod.ebpf.bpffs")
_libc = ctypes.CDLL(None, use_errno=True)


def fs_magic(path: str | os.PathLike[str]) -> int:
    """``f_type`` of the filesystem ``path`` is on (``statfs(2)``; ``os.statvfs`` lacks it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {os.fspath(path)}: {os.strerror(err)}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_bpffs(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` exists and lies on a bpf filesystem."""
    try:
        return fs_magic(path) == BPF_FS_MAGIC
    except OSError:
        return False


def ensure_mounted(root: str | os.PathLike[str]) -> bool:
    """Make sure a bpffs is mounted at ``root`` (created mode 0700); True if it mounted one.

    Idempotent: an existing bpffs at ``root`` (or above it) is used as it is.
    """
    path = Path(root)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if is_bpffs(path):
        return False
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t bpf bpf {path}: {os.strerror(err)}")
    log.info("mounted bpffs", extra={"path": str(path)})
    return True


def pins_complete(pin_dir: str | os.PathLike[str]) -> bool:
    """True when every map and program pin of a loaded pod is present in ``pin_dir``."""
    base = Path(pin_dir)
    return all((base / name).exists() for name in PIN_NAMES)


def remove_pins(pin_dir: str | os.PathLike[str]) -> int:
    """Unlink every pin in ``pin_dir`` and remove the directory; return how many were removed.

    Missing entries are fine (idempotent). Unlinking a pin drops a reference only: programs
    still attached to a device stay alive until they are detached or the netns goes away.
    """
    base = Path(pin_dir)
    removed = 0
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            entry.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            remove_pins(entry)
    try:
        base.rmdir()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    return removed
