"""What ``/proc/<pid>/stat`` says about a process: its state and its start time.

The start time tells a process from a later one that reuses its PID; the state tells a
zombie (exited, not yet reaped) from a live process.
"""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 on), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def process_state(pid: int) -> str | None:
    """The one-letter state (``R``, ``S``, ``Z``...), None when there is no such process."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def process_start(pid: int) -> str | None:
    """Field 22, the start time in clock ticks since boot (as a string), or None."""
    fields = stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is neither a zombie nor dead)."""
    return process_state(pid) not in (None, "Z", "X")
