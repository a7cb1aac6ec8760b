"""The plugin's process settings (``ZEROPOD_*``) and its one pod annotation.

Settings come from ``zeropod_configure`` (the shim's environment plus containerd's runtime
options) and fall back to ``os.environ``, so a checkpointer built without the hook (a test, the
bench) behaves the same:

* ``ZEROPOD_IMAGE_ROOT`` (``/var/lib/zeropod/i``): checkpoint images live in
  ``<root>/<container id>/snapshot``, CRIU's logs in ``<root>/<container id>/work``; the CRIU
  configuration file zeropod writes is ``<root>/criu.conf``.
* ``ZEROPOD_CRIU_PREFREEZE`` (``true``): freeze the container's cgroup before ``runc checkpoint``.
  CRIU's own freezer loop sleeps 100 ms whenever the cgroup is not frozen at its first look,
  which it almost never is; a pre-frozen cgroup costs 0.3-0.5 ms instead.
* ``ZEROPOD_CRIU_KDAT`` (``true``): make sure CRIU's kernel-feature cache ``/run/criu.kdat``
  exists (see :mod:`.kdat`); without it every dump and restore re-probes the kernel (22-32 ms).
* ``ZEROPOD_CRIU_NETWORK_LOCK`` (``skip``): CRIU's ``network-lock`` method in the config file.
  ``skip`` leaves nothing behind in the pod's namespace (connects are refused at once, which the
  redirector needs); ``nftables`` drops all traffic until the restore (only for comparisons).
* ``ZEROPOD_CRIU_FILE_LOCKS`` (``true``): ``--file-locks`` on checkpoint and restore (an app
  holding an flock cannot be dumped without it).
* ``ZEROPOD_CRIU_EXT_UNIX_SK`` (``true``): ``--ext-unix-sk`` on checkpoint and restore
  (unix sockets connected to peers outside the container, e.g. a log agent).
* ``ZEROPOD_CRIU_MASKED_EXTERNAL`` (``true``): dump runc's masked directories (empty read-only
  tmpfs) as external mounts and bind an empty read-only tmpfs there at restore, instead of
  CRIU's ``tar``/``gzip`` per tmpfs (~3.7 ms each per restore; see :mod:`.masked`).
* ``ZEROPOD_CRIU_MODE`` (``direct``): ``direct`` dumps and restores through CRIU's RPC from
  the shim, with the restoring ``criu swrk`` started right after the dump (see :mod:`.direct`);
  a restore that fails that way is retried through ``runc restore`` from the same images.
  ``runc``: ``runc checkpoint`` and ``runc restore`` only (the slower path, ~25-30 ms more per
  wake-up, for a runc or CRIU the direct path does not know).
* ``ZEROPOD_CRIU_LOG_LEVEL`` (``2``: errors and warnings): CRIU's log level (0-4) for direct
  dumps and restores; ``dump.log``/``restore.log`` in the work directory. 4 (debug, ~750 lines
  per restore) costs 2.5-3.5 ms more on every restore of a small server; set it to look
  into a failure.
* ``ZEROPOD_CRIU_LAZY_MIB`` (``32``): in direct mode, restore lazily when the dump holds at
  least this many MiB of memory pages: a ``criu lazy-pages`` daemon (started with the swrk)
  serves the memory from the image after the app already runs (see :mod:`.lazy`); ``0``
  always, ``off`` never.
* ``ZEROPOD_CRIU_LAZY_EAGER_MIB`` (``16``): of a lazy restore's memory, restore the smallest
  runs of pages at once, up to this many MiB (the app's heap and arenas, which its first
  request touches; see :mod:`.eager`); only the large areas stay lazy. ``0``: all lazy.
  The same budget chooses the runs a live dump copies into its image (:mod:`.live`).
* ``ZEROPOD_CRIU_TMPFS_EXTERNAL`` (``true``): in direct mode, leave tmpfs mounts that hold
  only structure (``/dev``'s nodes and links, an empty ``/dev/shm`` or ``/run``) out of the
  dump and recreate them before the restore, instead of CRIU's ``tar``/``gzip`` per tmpfs
  (~3.7 ms each on every dump and restore; see :mod:`.tmpfs`).
* ``ZEROPOD_CRIU_TIMEOUT`` (``120``): seconds after which a checkpoint or restore is killed
  (runc and CRIU) and counts as failed; a damaged image can make CRIU's restorer loop forever.

The annotation ``zeropod.ctrox.dev/pre-dump`` (``false``) asks for an incremental checkpoint:
a pre-dump while the app runs, then a final dump of the pages changed since. It needs CRIU's
memory tracking (the kernel's soft-dirty bits); where that is missing it is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from zeropod_core.config import parse_switch, switch_setting

PRE_DUMP_ANNOTATION = "zeropod.ctrox.dev/pre-dump"
NETWORK_LOCK_METHODS = ("skip", "nftables", "iptables")
MODES = ("direct", "runc")

@dataclass(frozen=True)
class CriuSettings:
    """Process-wide settings of the criu plugin (see the module doc for the variables)."""

    image_root: Path = Path("/var/lib/zeropod/i")
    prefreeze: bool = True
    kdat_cache: bool = True
    network_lock: str = "skip"
    file_locks: bool = True
    ext_unix_sk: bool = True
    timeout_s: float = 120.0
    masked_external: bool = True
    mode: str = "direct"
    log_level: int = 2
    lazy_threshold_mib: int | None = 32
    lazy_eager_mib: int = 16
    tmpfs_external: bool = True

    @property
    def criu_config(self) -> Path:
        """The CRIU configuration file zeropod writes and names in ``org.criu.config``."""
        return self.image_root / "criu.conf"

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> CriuSettings:
        """Read the ``ZEROPOD_*`` keys of ``env``; raises ValueError on malformed values."""
        base = cls()
        root = env.get("ZEROPOD_IMAGE_ROOT", "").strip()
        if root and not os.path.isabs(root):
            raise ValueError(f"ZEROPOD_IMAGE_ROOT must be an absolute path, got {root!r}")
        lock = env.get("ZEROPOD_CRIU_NETWORK_LOCK", "").strip().lower() or base.network_lock
        if lock not in NETWORK_LOCK_METHODS:
            raise ValueError(f"ZEROPOD_CRIU_NETWORK_LOCK: expected one of "
                             f"{', '.join(NETWORK_LOCK_METHODS)}, got {lock!r}")
        mode = env.get("ZEROPOD_CRIU_MODE", "").strip().lower() or base.mode
        if mode not in MODES:
            raise ValueError(f"ZEROPOD_CRIU_MODE: expected one of {', '.join(MODES)}, "
                             f"got {mode!r}")
        level = env.get("ZEROPOD_CRIU_LOG_LEVEL", "").strip()
        if level and level not in ("0", "1", "2", "3", "4"):
            raise ValueError(f"ZEROPOD_CRIU_LOG_LEVEL: expected 0-4, got {level!r}")
        lazy_raw = env.get("ZEROPOD_CRIU_LAZY_MIB", "").strip().lower()
        lazy_mib: int | None = base.lazy_threshold_mib
        if lazy_raw == "off":
            lazy_mib = None
        elif lazy_raw:
            if not lazy_raw.isdigit():
                raise ValueError(f"ZEROPOD_CRIU_LAZY_MIB: expected MiB (an integer >= 0) or "
                                 f"off, got {lazy_raw!r}")
            lazy_mib = int(lazy_raw)
        eager_raw = env.get("ZEROPOD_CRIU_LAZY_EAGER_MIB", "").strip()
        if eager_raw and not eager_raw.isdigit():
            raise ValueError(f"ZEROPOD_CRIU_LAZY_EAGER_MIB: expected MiB (an integer >= 0), "
                             f"got {eager_raw!r}")
        return cls(
            mode=mode,
            lazy_threshold_mib=lazy_mib,
            lazy_eager_mib=int(eager_raw) if eager_raw else base.lazy_eager_mib,
            log_level=int(level) if level else base.log_level,
            image_root=Path(root) if root else base.image_root,
            prefreeze=switch_setting(env, "ZEROPOD_CRIU_PREFREEZE", base.prefreeze),
            kdat_cache=switch_setting(env, "ZEROPOD_CRIU_KDAT", base.kdat_cache),
            network_lock=lock,
            file_locks=switch_setting(env, "ZEROPOD_CRIU_FILE_LOCKS", base.file_locks),
            ext_unix_sk=switch_setting(env, "ZEROPOD_CRIU_EXT_UNIX_SK", base.ext_unix_sk),
            timeout_s=_positive_float(env, "ZEROPOD_CRIU_TIMEOUT", base.timeout_s),
            masked_external=switch_setting(env, "ZEROPOD_CRIU_MASKED_EXTERNAL",
                                          base.masked_external),
            tmpfs_external=switch_setting(env, "ZEROPOD_CRIU_TMPFS_EXTERNAL",
                                         base.tmpfs_external),
        )

    @classmethod
    def from_environ(cls) -> CriuSettings:
        return cls.from_mapping(os.environ)


def wants_pre_dump(config: Mapping[str, object]) -> bool:
    """Whether the container's parsed annotations ask for a pre-dump.

    The core hands parsed values (a bool); a raw string is accepted too, so a checkpointer
    built outside the shim reads the same annotation.
    """
    value = config.get(PRE_DUMP_ANNOTATION, False)
    if isinstance(value, str):
        return parse_switch(value)
    return bool(value)


def _positive_float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}: expected seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{key}: must be positive, got {raw!r}")
    return value
