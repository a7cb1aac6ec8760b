"""The plugin's manager settings (``ZEROPOD_*``), read once at start.

* ``ZEROPOD_MIGRATION_LISTEN`` (``0.0.0.0:8090``): address of the image service; port 0
  picks a free one.
* ``ZEROPOD_MIGRATION_TLS_DIR`` (``/var/lib/zeropod/migration-tls``): ``ca.crt`` plus this
  node's ``node.crt``/``node.key``, or ``ca.crt``/``ca.key`` to issue them at start.
* ``ZEROPOD_NODE_NAME`` (the host name) and ``ZEROPOD_MIGRATION_ADDRESSES`` (comma-separated
  IPs or names, default the node name and ``127.0.0.1``): what an issued certificate names.
* ``ZEROPOD_IMAGE_ROOT`` (``/var/lib/zeropod/i``): the checkpoint images that are served.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MigrationSettings:
    listen: str = "0.0.0.0:8090"
    tls_dir: Path = Path("/var/lib/zeropod/migration-tls")
    node_name: str = ""
    addresses: tuple[str, ...] = ()
    image_root: Path = Path("/var/lib/zeropod/i")

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> MigrationSettings:
        """Raises ValueError naming the variable when a value is malformed."""
        listen = env.get("ZEROPOD_MIGRATION_LISTEN", "").strip() or cls.listen
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"ZEROPOD_MIGRATION_LISTEN must be HOST:PORT, got {listen!r}")
        paths = {}
        for key, default in (("ZEROPOD_MIGRATION_TLS_DIR", cls.tls_dir),
                             ("ZEROPOD_IMAGE_ROOT", cls.image_root)):
            value = env.get(key, "").strip()
            if value and not os.path.isabs(value):
                raise ValueError(f"{key} must be an absolute path, got {value!r}")
            paths[key] = Path(value) if value else default
        node = env.get("ZEROPOD_NODE_NAME", "").strip() or socket.gethostname()
        addresses = tuple(a.strip() for a in env.get("ZEROPOD_MIGRATION_ADDRESSES", "")
                          .split(",") if a.strip()) or (node, "127.0.0.1")
        return cls(listen=listen, tls_dir=paths["ZEROPOD_MIGRATION_TLS_DIR"], node_name=node,
                   addresses=addresses, image_root=paths["ZEROPOD_IMAGE_ROOT"])
