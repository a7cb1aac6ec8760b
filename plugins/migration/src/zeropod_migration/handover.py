"""The source shim's hand-over: a sleeping container's image outlives the container.

When the kubelet stops a sleeping container listed in ``zeropod.ctrox.dev/migrate`` (its pod
is being deleted, say), the shim does not let the image go with the container: at ``Delete``
it moves ``<image root>/<id>/snapshot`` (a rename) into the hand-over folder
``<image root>-migrating/<id>/snapshot``, copies the files the container wrote (its overlay
upper dir, unless ``disable-migrate-data``) into ``snapshot/upper``, and writes
``handover.json`` last. From then on the node's manager owns the folder: it publishes it in
the pod's ``Migration`` and removes it once the migration is final (or when no ``Migration``
wants it). Standard library only: the shim imports this.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .annotations import UPPER

log = logging.getLogger("zeropod.migration.handover")

HANDOVER_FILE = "handover.json"
SNAPSHOT = "snapshot"


def handover_root(image_root: Path) -> Path:
    """``/var/lib/zeropod/i`` -> ``/var/lib/zeropod/i-migrating``: next to the image root (one
    file system, so the hand-over is a rename) but outside it (the criu plugin's clean-up of
    dead containers' folders never sees it)."""
    return image_root.with_name(image_root.name + "-migrating")


@dataclass(frozen=True)
class HandOver:
    """What the shim tells the manager about a handed-over image."""

    container_id: str
    container_name: str
    pod_name: str
    pod_namespace: str
    handed_over_at: float  # time.time()
    files: bool  # the container's files are in snapshot/upper

    @classmethod
    def load(cls, folder: Path) -> HandOver | None:
        """The record in ``folder``; None while the hand-over is incomplete."""
        try:
            data = json.loads((folder / HANDOVER_FILE).read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def hand_over(image_root: Path, container_id: str, container_name: str, pod_name: str,
              pod_namespace: str, upper: Path | None) -> Path | None:
    """Move the container's image to the hand-over folder; None when there is no image.

    :param upper: the container's overlay upper dir whose content travels, or None.
    """
    snapshot = image_root / container_id / SNAPSHOT
    if not (snapshot / "inventory.img").is_file():
        return None
    folder = handover_root(image_root) / container_id
    shutil.rmtree(folder, ignore_errors=True)  # a stale one of the same container
    folder.mkdir(mode=0o700, parents=True)
    snapshot.rename(folder / SNAPSHOT)
    files = upper is not None and upper.is_dir()
    if upper is not None and files:
        shutil.copytree(upper, folder / SNAPSHOT / UPPER, symlinks=True)
    record = HandOver(container_id, container_name, pod_name, pod_namespace, time.time(), files)
    tmp = folder / f".{HANDOVER_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, folder / HANDOVER_FILE)
    return folder
