"""Checkpoint folders of containers that no longer exist: found and removed by the manager.

A shim that crashed or was killed (and a node that rebooted mid-checkpoint) can leave
``<image root>/<container id>/`` behind: process memory, secrets included, on disk for good.
The node manager looks for such folders from time to time. It must never touch a live
container's, even one whose shim it has not connected to yet, so a folder is removed only
when all of these hold:

* no shim the manager is connected to reports the container;
* the shim that made the folder has gone: the shim writes its PID and the process's start
  time into ``owner`` when it creates the folder, and that process no longer exists (a reused
  PID has another start time);
* without an ``owner`` file (a folder made by an older version, or in the instant between the
  folder and its owner file), it has not been modified for ``UNOWNED_GRACE_S``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from zeropod_core.procfs import process_start

from .paths import ImagePaths

log = logging.getLogger("zeropod.criu.orphans")

OWNER_FILE = "owner"
UNOWNED_GRACE_S = 3600.0


def write_owner(folder: Path, pid: int | None = None) -> None:
    """Record the process (this shim) that owns a container's folder."""
    pid = pid or os.getpid()
    (folder / OWNER_FILE).write_text(f"{pid} {process_start(pid) or ''}\n")


def owner_alive(folder: Path) -> bool | None:
    """Whether the folder's owner process still runs; None when there is no owner file."""
    try:
        pid_text, _, started = (folder / OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    now = process_start(pid)
    return now is not None and (not started or now == started)


def find_orphans(image_root: Path, live_ids: Iterable[str],
                 now: float | None = None) -> list[Path]:
    """The container folders below ``image_root`` that nothing alive owns (see module doc)."""
    live = set(live_ids)
    now = time.time() if now is None else now
    try:
        entries = sorted(image_root.iterdir())
    except FileNotFoundError:
        return []
    orphans = []
    for folder in entries:
        if folder.name.startswith(".") or not folder.is_dir() or folder.is_symlink():
            continue  # .masked and other shared state
        if folder.name in live:
            continue
        alive = owner_alive(folder)
        if alive is None:
            try:
                idle = now - folder.stat().st_mtime
            except OSError:
                continue
            if idle < UNOWNED_GRACE_S:
                continue
        elif alive:
            continue
        orphans.append(folder)
    return orphans


def remove_orphans(image_root: Path, live_ids: Iterable[str]) -> list[str]:
    """Remove what :func:`find_orphans` finds; returns the container ids removed."""
    removed = []
    for folder in find_orphans(image_root, live_ids):
        ImagePaths(image_root, folder.name).remove_all()  # detaches mounts below it first
        if not folder.exists():
            removed.append(folder.name)
            log.warning("removed the checkpoint folder of a container that no longer exists",
                        extra={"container": folder.name, "path": str(folder)})
    return removed
