"""Manager-side hooks of ``zeropod-criu``: CRIU's features and cache state for ``/healthz``,
and the removal of checkpoint folders whose container is gone (:mod:`.orphans`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from zeropod_core import hookimpl
from zeropod_core.providers import NodeView

from .features import detect_features
from .kdat import RUN_DIR
from .node import CriuNotFound, NodeKey, find_criu
from .orphans import remove_orphans
from .settings import CriuSettings

log = logging.getLogger("zeropod.criu.manager")

_settings: CriuSettings | None = None


@hookimpl
def zeropod_manager_configure(settings: Mapping[str, str]) -> None:
    global _settings
    try:
        _settings = CriuSettings.from_mapping(settings)
    except ValueError as exc:
        log.error("invalid criu plugin settings; orphaned images are not cleaned up",
                  extra={"error": str(exc)})
        _settings = None


@hookimpl
def zeropod_node_housekeeping(node: NodeView) -> None:
    """Remove checkpoint folders of containers that no longer exist."""
    if _settings is None:
        return
    remove_orphans(_settings.image_root, [container.id for container in node.containers()])


@hookimpl
def zeropod_node_capabilities() -> dict[str, Any]:
    try:
        criu = find_criu()
        key = NodeKey.current(criu)
    except (CriuNotFound, OSError) as exc:
        return {"criu_features": {"error": str(exc)}}
    features = detect_features(criu, key)
    return {"criu_features": {
        "version": key.criu_version,
        "mem_track": features.mem_track,
        "lazy_pages": features.lazy_pages,
        "pre_dump": not features.pre_dump_unavailable,
        "pre_dump_unavailable": features.pre_dump_unavailable,
        "kdat_cache": (RUN_DIR / "criu.kdat").exists(),
    }}
