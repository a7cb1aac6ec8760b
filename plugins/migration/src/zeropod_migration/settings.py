"""The plugin's manager settings (``ZEROPOD_*``), read once at start.

* ``ZEROPOD_MIGRATION_LISTEN`` (``0.0.0.0:8090``): address of the image service; port 0
  picks a free one.
* ``ZEROPOD_MIGRATION_TLS_DIR`` (``/var/lib/zeropod/migration-tls``): ``ca.crt`` plus this
  node's ``node.crt``/``node.key``, or ``ca.crt``/``ca.key`` to issue them at start.
* ``ZEROPOD_NODE_NAME`` (the host name) and ``ZEROPOD_MIGRATION_ADDRESSES`` (comma-separated
  IPs or names, default the node name and ``127.0.0.1``): what an issued certificate names.
* ``ZEROPOD_IMAGE_ROOT`` (``/var/lib/zeropod/i``): the checkpoint images that are served.

With the migration controller (``--migration-controller``):

* ``ZEROPOD_MIGRATION_NAMESPACE`` (``zeropod-system``): where the CA's Secret
  ``zeropod-migration-ca`` is kept (created if missing); ``ZEROPOD_MIGRATION_TLS_DIR`` is
  then not used.
* ``ZEROPOD_MIGRATION_ADVERTISE`` (the first IP of the addresses, else the node name): the
  host other nodes reach this node's image service at (a DaemonSet sets the pod IP).
* ``ZEROPOD_MIGRATION_CLAIM_TIMEOUT`` (30 s): a ``Migration`` no target pod claimed by then
  becomes ``Unclaimed`` and its images are removed.
* ``ZEROPOD_MIGRATION_FIND_TIMEOUT`` (2 s): how long a new container of a Deployment pod
  waits for a ``Migration`` to claim before it starts fresh.
* ``ZEROPOD_MIGRATION_IMAGE_TIMEOUT`` (60 s): how long the target waits for the source's
  image (its hand-over, then the pull) before it starts fresh and fails the migration.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from zeropod_core.config import parse_duration


@dataclass(frozen=True)
class MigrationSettings:
    listen: str = "0.0.0.0:8090"
    tls_dir: Path = Path("/var/lib/zeropod/migration-tls")
    node_name: str = ""
    addresses: tuple[str, ...] = ()
    image_root: Path = Path("/var/lib/zeropod/i")
    namespace: str = "zeropod-system"
    advertise: str = ""
    claim_timeout_s: float = 30.0
    find_timeout_s: float = 2.0
    image_timeout_s: float = 60.0

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
        advertise = env.get("ZEROPOD_MIGRATION_ADVERTISE", "").strip() or next(
            (a for a in addresses if _is_ip(a) and a != "127.0.0.1"), node)
        times = {key: _seconds(env, key, default) for key, default in (
            ("ZEROPOD_MIGRATION_CLAIM_TIMEOUT", cls.claim_timeout_s),
            ("ZEROPOD_MIGRATION_FIND_TIMEOUT", cls.find_timeout_s),
            ("ZEROPOD_MIGRATION_IMAGE_TIMEOUT", cls.image_timeout_s))}
        return cls(listen=listen, tls_dir=paths["ZEROPOD_MIGRATION_TLS_DIR"], node_name=node,
                   addresses=addresses, image_root=paths["ZEROPOD_IMAGE_ROOT"],
                   namespace=env.get("ZEROPOD_MIGRATION_NAMESPACE", "").strip()
                   or cls.namespace, advertise=advertise,
                   claim_timeout_s=times["ZEROPOD_MIGRATION_CLAIM_TIMEOUT"],
                   find_timeout_s=times["ZEROPOD_MIGRATION_FIND_TIMEOUT"],
                   image_timeout_s=times["ZEROPOD_MIGRATION_IMAGE_TIMEOUT"])


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = parse_duration(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{key} must be a positive duration (e.g. 30s), got {text!r}")
    return value
