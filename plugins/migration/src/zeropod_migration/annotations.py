"""The pod annotations of migration (upstream's names) and the files both sides agree on.

* ``zeropod.ctrox.dev/migrate: "<c1>,<c2>"``: these containers move to the replacement pod
  on another node while scaled down (their image travels; they are never started).
* ``zeropod.ctrox.dev/live-migrate: "<container>"``: this running container moves live
  (lazy pages: see :mod:`.live`).
* ``zeropod.ctrox.dev/disable-migrate-data: "true"``: the files the container wrote (its
  overlay upper dir) stay behind.

Files, below ``<image root>/<container id>/``:

* ``source.json`` (source node, written by the shim after each checkpoint of a container
  that may migrate): where its overlay upper dir is, and whether it travels; the image
  service streams that folder as ``upper/`` after the CRIU images.
* ``snapshot/zeropod-migration.json`` (target node, written by the manager once an image is
  pulled and verified): the app's ports and where the image came from. Its presence is what
  makes the target shim start the container asleep.
* ``.live/<key>/`` (target node, live migration, :func:`live_key`): the target manager
  expects a live arrival; it pulls the image into ``.live/<key>/snapshot`` there, and the
  target shim's ``Create`` waits for it (bounded) and moves it to its own folder. The
  container can thus be created while the source still dumps.
* ``snapshot/zeropod-live.json`` (target node, live migration): ``{"page_server": [host,
  port]}``, the loopback end of the page-server proxy; the criu plugin's restore reads it
  (``zeropod_criu.live.LIVE_FILE``) and fetches the pages from there, and the target shim
  restores at once instead of waiting for a connection.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIX = "zeropod.ctrox.dev/"
MIGRATE = PREFIX + "migrate"
LIVE_MIGRATE = PREFIX + "live-migrate"
DISABLE_MIGRATE_DATA = PREFIX + "disable-migrate-data"

SOURCE_FILE = "source.json"
INCOMING_FILE = "zeropod-migration.json"
LIVE_FILE = "zeropod-live.json"  # the same name as zeropod_criu.live.LIVE_FILE
# <image root>/.live/<key>/: a live arrival the target manager expects (see live_key)
LIVE_PENDING = ".live"
UPPER = "upper"


def live_key(pod_namespace: str, pod_name: str, container_name: str, container_id: str) -> str:
    """The name both the target manager and the target shim know a live arrival by before
    the container exists: ``<namespace>_<pod>_<container>`` under Kubernetes (the manager
    knows the claimed target pod), the container id elsewhere (the lab names it)."""
    if pod_name and container_name:
        return f"{pod_namespace or 'default'}_{pod_name}_{container_name}"
    return container_id


def wants_migration(config: object, names: tuple[str, ...]) -> bool:
    """Whether the ``migrate`` annotation lists the container under any of ``names``."""
    return isinstance(config, frozenset) and bool(config & set(names))


@dataclass(frozen=True)
class SourceInfo:
    """What the source shim tells its manager about a checkpointed container."""

    upper_dir: str
    migrate_data: bool

    def save(self, base: Path) -> None:
        _write_json(base / SOURCE_FILE, asdict(self))

    @classmethod
    def load(cls, base: Path) -> SourceInfo | None:
        try:
            data = json.loads((base / SOURCE_FILE).read_text())
            return cls(upper_dir=str(data["upper_dir"]), migrate_data=bool(data["migrate_data"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class IncomingInfo:
    """What the target manager leaves with a pulled image for the target shim."""

    ports: tuple[int, ...]
    source: str

    def save(self, snapshot: Path) -> None:
        _write_json(snapshot / INCOMING_FILE, {"ports": list(self.ports), "source": self.source})

    @classmethod
    def load(cls, snapshot: Path) -> IncomingInfo | None:
        try:
            data = json.loads((snapshot / INCOMING_FILE).read_text())
            return cls(ports=tuple(int(p) for p in data["ports"]), source=str(data["source"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    tmp.replace(path)
