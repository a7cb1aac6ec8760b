"""The few cgroup operations the shim needs itself (runc does the rest).

* Where a container's processes are listed (``cgroup.procs``), read from its init's
  ``/proc/<pid>/cgroup`` while it runs, so that after init's exit the shim can wait until
  nothing of the container is left before it reports the exit.
* Joining the cgroup containerd names as ``shim_cgroup`` in the create options.

Works on cgroup v1, v2 and hybrid hosts (v1 controllers plus cgroup2 under ``unified``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("zeropod.shim.cgroups")

CGROUP_ROOT = Path("/sys/fs/cgroup")
_POLL_S = 0.005


def procs_file(pid: int) -> Path | None:
    """The ``cgroup.procs`` that lists every process of ``pid``'s container, or None.

    The v1 ``pids`` hierarchy where there is one, else another v1 controller, else cgroup2.
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1: dict[str, Path] = {}
    v2: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup2: its own mount, or "unified" on a hybrid host
            unified = CGROUP_ROOT / "unified"
            base = unified if unified.is_dir() else CGROUP_ROOT
            v2.append(base / path.lstrip("/") / "cgroup.procs")
        elif not controllers.startswith("name="):
            v1[controllers] = CGROUP_ROOT / controllers / path.lstrip("/") / "cgroup.procs"
    pids = [procs for controllers, procs in v1.items() if "pids" in controllers.split(",")]
    return next((c for c in (*pids, *v1.values(), *v2) if c.exists()), None)


def members(procs: Path) -> list[int]:
    """The PIDs in a ``cgroup.procs`` file; [] when the cgroup is gone."""
    try:
        return [int(line) for line in procs.read_text().split()]
    except (OSError, ValueError):
        return []


async def wait_empty(procs: Path | None, timeout_s: float) -> bool:
    """Wait until no process is left in the cgroup; False if some still are at the timeout."""
    if procs is None:
        return True
    deadline = time.monotonic() + timeout_s
    while members(procs):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def join(cgroup: str, pid: int) -> None:
    """Move ``pid`` into ``cgroup`` (a path below each hierarchy) wherever that cgroup exists.

    Best effort, as containerd's runc shim: a missing cgroup is logged, not an error.
    """
    joined = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        procs = hierarchy / cgroup.lstrip("/") / "cgroup.procs"
        if not procs.exists():
            continue
        try:
            procs.write_text(str(pid))
            joined.append(hierarchy.name)
        except OSError as exc:
            log.warning("cannot join the shim cgroup", extra={
                "cgroup": cgroup, "hierarchy": hierarchy.name, "error": str(exc)})
    if not joined:
        log.warning("shim cgroup not found in any hierarchy", extra={"cgroup": cgroup})
    else:
        log.info("shim joined its cgroup", extra={"cgroup": cgroup, "hierarchies": joined,
                                                  "pid": os.getpid()})
