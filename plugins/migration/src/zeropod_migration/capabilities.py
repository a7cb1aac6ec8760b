"""Whether this node can take part in a live migration, and why not (shown in ``/healthz``).

Live migration needs userfaultfd (CRIU's lazy pages) and pipes of 4 MiB for CRIU's page
server: above ``/proc/sys/fs/pipe-max-size`` (1 MiB by default) only a process with
CAP_SYS_RESOURCE may make them. Without either, CRIU fails at the first page request.
"""

from __future__ import annotations

from pathlib import Path

CRIU_PIPE_BYTES = 4 << 20
CAP_SYS_RESOURCE = 24


def _has_cap(bit: int, status: Path = Path("/proc/self/status")) -> bool:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def live_migration_support(proc: Path = Path("/proc")) -> dict[str, object]:
    """``{"available": bool, "reason": str}`` for this node."""
    if not (proc / "sys/vm/unprivileged_userfaultfd").exists():
        return {"available": False,
                "reason": "the kernel has no userfaultfd (CONFIG_USERFAULTFD): no lazy pages"}
    pipe_max = int((proc / "sys/fs/pipe-max-size").read_text())
    if pipe_max < CRIU_PIPE_BYTES and not _has_cap(CAP_SYS_RESOURCE, proc / "self/status"):
        return {"available": False,
                "reason": f"fs.pipe-max-size is {pipe_max} and the manager lacks "
                          f"CAP_SYS_RESOURCE: CRIU's page server needs {CRIU_PIPE_BYTES}-byte "
                          "pipes (sysctl fs.pipe-max-size=4194304)"}
    return {"available": True, "reason": ""}
