"""What CRIU leaves in the work directory: its log (for errors) and its statistics.

runc runs CRIU with log level 4 and the work directory as CRIU's: ``dump.log`` /
``restore.log`` explain a failure (the last lines name the reason), and ``stats-dump`` /
``stats-restore`` (a CRIU image holding one ``StatsEntry``) say where the time went, in
microseconds: ``freezing_time``, ``frozen_time``, ``memdump_time``, ``memwrite_time``,
``pages_written``... on dump, ``forking_time``, ``restore_time``, ``pages_restored``... on
restore.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("zeropod.criu.log")

TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` ("" if it does not exist)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def read_stats(candidates: Iterable[Path]) -> dict[str, int]:
    """The integer fields of the first readable CRIU stats file among ``candidates``.

    pycriu is imported here, not at module level: it is heavy, and a shim that never
    checkpoints never needs it. Missing pycriu or an unreadable file give an empty dict (the
    statistics are diagnostics, never a reason to fail a checkpoint).
    """
    for path in candidates:
        if not path.is_file():
            continue
        try:
            import pycriu.images

            with open(path, "rb") as f:
                image = pycriu.images.load(f)
        except Exception as exc:  # noqa: BLE001 - pycriu raises assorted errors on bad input
            log.debug("cannot read CRIU stats", extra={"path": str(path), "error": str(exc)})
            return {}
        stats: dict[str, int] = {}
        for entry in image.get("entries", []):
            for section in entry.values():
                if isinstance(section, dict):
                    stats.update({k: v for k, v in section.items()
                                  if isinstance(v, int) and not isinstance(v, bool)})
        return stats
    return {}
