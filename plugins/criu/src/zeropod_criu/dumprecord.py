"""What a restore must know about a dump beyond CRIU's images, kept next to them.

A restore declares the same external mounts the dump declared (runc's masked directories,
the structure-only tmpfs mounts of :mod:`.tmpfs`) and must know whether CRIU ran inside the
pod's network namespace (then the image holds no network namespace and the restored tasks
join the pod's, see :func:`.direct.dump`). The checkpointer that dumped knows all that; a restore by
another checkpointer does not: a shim restarted in between, or another node after a
migration. So each dump writes ``zeropod-dump.json`` into the image folder, and a restore that
did not dump reads it. The file travels with the image (it is an ordinary file in it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .tmpfs import Entry, Tmpfs

log = logging.getLogger("zeropod.criu.dumprecord")

RECORD_NAME = "zeropod-dump.json"
VERSION = 1


class RecordError(ValueError):
    """The record exists but cannot be used (damaged, or written by a newer version)."""


@dataclass(frozen=True)
class DumpRecord:
    """:ivar netns_joined: CRIU dumped from inside the pod's network namespace.
    :ivar masked: runc's masked directories, dumped as external mounts.
    :ivar tmpfs: the tmpfs mounts recreated at restore instead of restored by CRIU."""

    netns_joined: bool = False
    masked: list[str] = field(default_factory=list)
    tmpfs: list[Tmpfs] = field(default_factory=list)

    def write(self, images: Path) -> None:
        data = {"version": VERSION, **asdict(self)}
        target = images / RECORD_NAME
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)

    @classmethod
    def read(cls, images: Path) -> DumpRecord | None:
        """The record of the image in ``images``; None if the dump wrote none (a ``runc
        checkpoint``, or an image of an older version: its restore needs nothing extra only
        if it declared nothing external)."""
        try:
            data: dict[str, Any] = json.loads((images / RECORD_NAME).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RecordError(f"{images / RECORD_NAME}: {exc}") from exc
        if data.get("version") != VERSION:
            raise RecordError(f"{images / RECORD_NAME}: version {data.get('version')!r}, "
                              f"this plugin reads version {VERSION}")
        try:
            return cls(netns_joined=bool(data["netns_joined"]),
                       masked=[str(p) for p in data["masked"]],
                       tmpfs=[_tmpfs(m) for m in data["tmpfs"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{images / RECORD_NAME}: {exc!r}") from exc


def _tmpfs(data: dict[str, Any]) -> Tmpfs:
    entries = tuple(Entry(**entry) for entry in data["entries"])
    return Tmpfs(**{**data, "entries": entries})
