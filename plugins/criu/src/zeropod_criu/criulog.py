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

from .protowire import HEADER, entries, fields

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


# CRIU's images/stats.proto: StatsEntry{dump = 1, restore = 2} and the two messages' fields.
_STATS_SECTIONS = {
    1: {1: "freezing_time", 2: "frozen_time", 3: "memdump_time", 4: "memwrite_time",
        5: "pages_scanned", 6: "pages_skipped_parent", 7: "pages_written",
        8: "irmap_resolve", 9: "pages_lazy", 10: "page_pipes", 11: "page_pipe_bufs",
        12: "shpages_scanned", 13: "shpages_skipped_parent", 14: "shpages_written"},
    2: {1: "pages_compared", 2: "pages_skipped_cow", 3: "forking_time", 4: "restore_time",
        5: "pages_restored"},
}
_STATS_MAGIC = 0x57093306


def decode_stats(raw: bytes) -> dict[str, int]:
    """The counters in a CRIU ``stats-dump``/``stats-restore`` image.

    Decoded here rather than with ``pycriu.images``: importing pycriu's image modules adds about
    2.5 MiB to a shim, one per pod, for a file of a few dozen bytes. The test suite checks this
    decoder against ``pycriu.images.load`` on real images.
    """
    if len(raw) < HEADER + 4 or int.from_bytes(raw[4:8], "little") != _STATS_MAGIC:
        raise ValueError("not a CRIU stats image")
    entry = dict(fields(next(entries(raw))))
    stats: dict[str, int] = {}
    for section, names in _STATS_SECTIONS.items():
        body = entry.get(section)
        if isinstance(body, bytes):
            stats.update({names[number]: value for number, value in fields(body)
                          if number in names and isinstance(value, int)})
    return stats


def read_stats(candidates: Iterable[Path]) -> dict[str, int]:
    """The counters of the first readable CRIU stats file among ``candidates``.

    An unreadable file gives an empty dict: the statistics are diagnostics, never a reason to
    fail a checkpoint or a restore.
    """
    for path in candidates:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        try:
            return decode_stats(raw)
        except (ValueError, IndexError) as exc:
            log.debug("cannot read CRIU stats", extra={"path": str(path), "error": str(exc)})
            return {}
    return {}
