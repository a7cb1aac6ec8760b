"""The overlay upper dir of a container's rootfs: where the files it wrote are.

The shim mounts the rootfs at ``<bundle>/rootfs`` (an overlay from containerd's snapshotter);
the mount's options in ``/proc/self/mountinfo`` name its ``upperdir``. Moving that folder's
content is how a container's files travel (upstream does the same). Whiteouts (files the
container deleted from the image) are device nodes and do not travel.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def upper_dir(mount_point: Path, mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """The upperdir of the overlay mounted at ``mount_point``, None if it is not one."""
    wanted = str(mount_point)
    with open(mountinfo) as mounts:
        for line in mounts:
            fields = line.split()
            if _unescape(fields[4]) != wanted:
                continue
            rest = fields[fields.index("-") + 1:]
            if rest[0] != "overlay":
                continue
            for option in rest[2].split(","):
                if option.startswith("upperdir="):
                    return Path(_unescape(option.removeprefix("upperdir=")))
    return None


def move_into(source: Path, upper: Path) -> int:
    """Move everything below ``source`` into ``upper`` (same file system: renames; otherwise
    copies); what exists already in ``upper`` is replaced. Returns the entries moved."""
    moved = 0
    for entry in sorted(os.listdir(source)):
        target = upper / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        shutil.move(str(source / entry), str(target))
        moved += 1
    return moved
