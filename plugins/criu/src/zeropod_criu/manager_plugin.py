"""Manager-side hooks of ``zeropod-criu``: CRIU's features and cache state for ``/healthz``."""

from __future__ import annotations

from typing import Any

from zeropod_core import hookimpl

from .features import detect_features
from .kdat import RUN_DIR
from .node import CriuNotFound, NodeKey, find_criu


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
