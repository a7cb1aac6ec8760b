"""The target node's side of a cold migration: pull a sleeping container's image and leave
it where the new container's shim finds it.

:func:`receive_image` pulls ``<source image root>/<source id>/snapshot`` (and the container's
files as ``upper/``) into ``<image root>/<target id>/snapshot``, verified, then writes
``zeropod-migration.json`` there with the app's ports (from the CRIU image) and the source.
From then on the target shim, at ``Create`` of ``<target id>``, starts the container asleep
from that image. On the same node no transfer is needed: :func:`adopt_local_image` renames.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from .annotations import IncomingInfo
from .image_ports import listening_ports
from .imagefs import TransferError
from .service import IMAGE_SUBDIR, PullResult, check_image_id, pull_image
from .tls import NodeCredentials

log = logging.getLogger("zeropod.migration.receive")


@dataclass(frozen=True)
class Received:
    """A migrated image in place for the target container."""

    snapshot: Path
    ports: tuple[int, ...]
    pull: PullResult | None


async def receive_image(address: str, creds: NodeCredentials, source_id: str,
                        image_root: Path, target_id: str, *, source_label: str = "",
                        compression: str = "auto", timeout_s: float | None = None) -> Received:
    """Pull the image of ``source_id`` from the node at ``address`` for ``target_id``.

    Raises :class:`~.imagefs.TransferError` (nothing left behind) when it did not arrive
    whole; the target container then starts fresh.
    """
    snapshot = image_root / check_image_id(target_id) / IMAGE_SUBDIR
    result = await pull_image(address, creds, source_id, snapshot, compression=compression,
                              timeout_s=timeout_s)
    return await asyncio.to_thread(mark_received, snapshot,
                                   source_label or f"{address}/{source_id}", result)


def adopt_local_image(image_root: Path, source_id: str, target_id: str, *,
                      upper_dir: Path | None = None) -> Received:
    """Same-node migration: move the source's image to the target's folder (a rename)."""
    source = image_root / check_image_id(source_id) / IMAGE_SUBDIR
    snapshot = image_root / check_image_id(target_id) / IMAGE_SUBDIR
    if not (source / "inventory.img").is_file():
        raise TransferError(f"no checkpoint image of {source_id} in {source}")
    snapshot.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    source.rename(snapshot)
    if upper_dir is not None and upper_dir.is_dir():
        shutil.copytree(upper_dir, snapshot / "upper", symlinks=True)
    return mark_received(snapshot, f"local/{source_id}", None)


def mark_received(snapshot: Path, source: str, pull: PullResult | None) -> Received:
    """Write ``zeropod-migration.json`` (ports, source) into a complete image: from then on
    the target shim takes it."""
    ports = listening_ports(snapshot)
    IncomingInfo(ports=ports, source=source).save(snapshot)
    log.info("migrated image ready", extra={"snapshot": str(snapshot), "ports": ports,
                                            "source": source})
    return Received(snapshot, ports, pull)
