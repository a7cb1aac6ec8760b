"""Which optional CRIU features this kernel supports, asked from CRIU itself.

Pre-dumps need memory-change tracking (the kernel's soft-dirty bits, ``CONFIG_MEM_SOFT_DIRTY``);
without it ``runc checkpoint --pre-dump`` fails with "CRIU is missing features". CRIU answers a
``FEATURE_CHECK`` RPC request with what it found, so the plugin asks once and degrades instead
of failing every pre-dump.

pycriu costs ~60 ms and ~2.5 MiB to import in a shim (its ~70 protobuf modules), so the answer
is also kept in ``/run/zeropod/criu-features.json`` for the boot and the CRIU build: only the
first shim after a boot or a CRIU upgrade pays for the import.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .node import STATE_DIR, NodeKey

log = logging.getLogger("zeropod.criu.features")

CACHE = STATE_DIR / "criu-features.json"


@dataclass(frozen=True)
class CriuFeatures:
    """CRIU's answer (all False and ``error`` set when the check itself failed)."""

    mem_track: bool = False
    lazy_pages: bool = False
    error: str = ""

    @property
    def pre_dump_unavailable(self) -> str:
        """Why pre-dumps cannot be used, or "" when they can."""
        if self.mem_track:
            return ""
        if self.error:
            return f"the CRIU feature check failed ({self.error})"
        return ("CRIU reports no memory tracking (the kernel lacks soft-dirty bits, "
                "CONFIG_MEM_SOFT_DIRTY)")


def check_features(criu: str) -> CriuFeatures:
    """Send CRIU a FEATURE_CHECK request (mem_track, lazy_pages) through pycriu.

    pycriu forks and ``waitpid()``s its ``criu swrk`` child itself: call this from the shim's
    loop thread (the reaper's SIGCHLD handler cannot run meanwhile), never from a worker thread.
    """
    try:
        import pycriu
    except ImportError as exc:
        return CriuFeatures(error=f"pycriu is not importable: {exc}")
    client = pycriu.criu()
    client.use_binary(criu)
    request = pycriu.rpc.criu_req(type=pycriu.rpc.FEATURE_CHECK)
    request.features.mem_track = True
    request.features.lazy_pages = True
    try:
        # pycriu has no public method for FEATURE_CHECK; this is the one its methods use.
        response = client._send_req_and_recv_resp(request)
    except pycriu.CRIUException as exc:
        return CriuFeatures(error=str(exc))
    if not response.success:
        return CriuFeatures(error=f"FEATURE_CHECK failed: errno {response.cr_errno} "
                                  f"{response.cr_errmsg}".strip())
    features = response.features
    return CriuFeatures(mem_track=bool(features.mem_track),
                        lazy_pages=bool(features.lazy_pages))


def _read_cache(path: Path, key: NodeKey) -> CriuFeatures | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key.as_dict():
        return None
    found = data.get("features")
    if not isinstance(found, dict):
        return None
    return CriuFeatures(mem_track=found.get("mem_track") is True,
                        lazy_pages=found.get("lazy_pages") is True)


def _write_cache(path: Path, key: NodeKey, features: CriuFeatures) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key.as_dict(), "features": asdict(features)}))
    tmp.replace(path)


def detect_features(criu: str, key: NodeKey | None, *, cache: Path | None = CACHE) -> CriuFeatures:
    """The features for this boot and CRIU: from the node cache, else from CRIU (then cached).

    A failed check is not cached, so the next shim asks again.
    """
    if cache is not None and key is not None:
        cached = _read_cache(cache, key)
        if cached is not None:
            return cached
    features = check_features(criu)
    if cache is not None and key is not None and not features.error:
        try:
            _write_cache(cache, key, features)
        except OSError as exc:
            log.debug("cannot cache the CRIU features", extra={"path": str(cache),
                                                               "error": str(exc)})
    return features
