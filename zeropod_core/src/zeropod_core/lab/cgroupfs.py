"""Reading a process's cgroup values (cgroup v1 controllers), for tests that check resources."""

from __future__ import annotations

from pathlib import Path


def v1_value(pid: int, controller: str, name: str) -> int:
    """The value of ``name`` (e.g. ``memory.limit_in_bytes``) in the ``controller`` cgroup of
    ``pid``, e.g. ``v1_value(pid, "cpu", "cpu.shares")``."""
    with open(f"/proc/{pid}/cgroup") as lines:
        path = next(line.rstrip().split(":", 2)[2] for line in lines
                    if controller in line.split(":")[1].split(","))
    return int(Path(f"/sys/fs/cgroup/{controller}{path}/{name}").read_text())
