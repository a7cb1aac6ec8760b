"""runc's ``<root>/<id>/state.json``: what a dump or restore without runc needs, and its fix-up.

The direct path (:mod:`.direct`) builds the CRIU request from the container's libcontainer
configuration, exactly as runc 1.1 does (rootfs, external network namespace, ``ext_mnt`` for
bind mounts, the v1 cgroup binds, masked files and device nodes), and afterwards rewrites the
fields runc's own restore would change, so ``runc state``/``kill``/``exec``/``checkpoint``/
``delete`` keep working on the restored process: ``init_process_pid``,
``init_process_start`` (field 22 of ``/proc/<pid>/stat``), ``created``, ``namespace_paths``
and ``external_descriptors`` (the restored stdio, which becomes ``descriptors.json`` at the
next ``runc checkpoint``). Nothing else changes: a direct dump leaves the cgroups and the
state directory in place.

A state file this module does not understand (another runc, OCI hooks that runc would run
during a restore) makes :func:`load` raise :class:`UnsupportedState`; the checkpointer then
uses runc for that container.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeropod_core import procfs

from .freezer import _cgroup_mounts, _Mount

_REQUIRED = ("init_process_pid", "init_process_start", "created", "namespace_paths",
             "external_descriptors", "cgroup_paths", "config")
# Hooks runc runs during a restore (CRIU's setup-namespaces notification) or around it.
_RESTORE_HOOKS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart")
_CHANGED_BY_RESTORE = ("init_process_pid", "init_process_start", "created", "namespace_paths",
                       "external_descriptors")
_NS_FILES = {"NEWCGROUP": "cgroup", "NEWIPC": "ipc", "NEWNET": "net", "NEWNS": "mnt",
             "NEWPID": "pid", "NEWUSER": "user", "NEWUTS": "uts"}


class UnsupportedState(Exception):
    """runc's state is not one the direct path can take over (the reason is the message)."""


@dataclass(frozen=True)
class Mount:
    """One ``ext_mnt`` pair of a CRIU request (``key`` -> ``val``)."""

    key: str
    val: str


@dataclass(frozen=True)
class RuncState:
    """The parsed state of one container and where it lives."""

    path: Path
    data: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.data["config"]
        return config

    @property
    def rootfs(self) -> str:
        return str(self.config["rootfs"])

    @property
    def init_pid(self) -> int:
        return int(self.data["init_process_pid"])

    @property
    def cgroup_dirs(self) -> list[Path]:
        """Every cgroup directory of the container (v1 controllers and the unified one)."""
        seen: dict[str, Path] = {}
        for path in self.data["cgroup_paths"].values():
            seen.setdefault(str(path), Path(path))
        return [p for p in seen.values() if p.is_dir()]

    @property
    def netns_path(self) -> str | None:
        """The network namespace the spec names by path (external to CRIU), if any."""
        for ns in self.config.get("namespaces") or ():
            if ns.get("type") == "NEWNET" and ns.get("path"):
                return str(ns["path"])
        return None

    @property
    def criu_config(self) -> str | None:
        """``org.criu.config`` from the container's labels (runc reads it there too)."""
        for label in self.config.get("labels") or ():
            key, _, value = str(label).partition("=")
            if key == "org.criu.config":
                return value
        return None

    def cgroup_binds(self, pid: int) -> list[tuple[str, Path]]:
        """The v1 cgroup binds runc made in the container: (mount point inside, host dir)."""
        if not any(m.get("device") == "cgroup" for m in self.config.get("mounts") or ()):
            return []
        host = [m for m in _cgroup_mounts(Path("/proc/self/mountinfo").read_text())
                if m.fstype == "cgroup"]
        inside = _cgroup_mounts(Path(f"/proc/{pid}/mountinfo").read_text())
        binds = []
        for mount in inside:
            if mount.fstype != "cgroup":
                continue
            source = _host_dir(host, mount)
            if source is not None:
                binds.append((mount.mountpoint, source))
        return binds

    def dump_mounts(self, pid: int,
                    cgroup_binds: list[tuple[str, Path]] | None = None) -> list[Mount]:
        """``ext_mnt`` of a dump, as runc 1.1 ``Checkpoint`` builds it (``cgroup_binds``:
        :meth:`cgroup_binds`, if already read)."""
        mounts = [Mount(m["destination"], m["destination"])
                  for m in self.config.get("mounts") or () if m.get("device") == "bind"]
        if cgroup_binds is None:
            cgroup_binds = self.cgroup_binds(pid)
        mounts += [Mount(dest, dest) for dest, _ in cgroup_binds]
        for path in self.config.get("mask_paths") or ():
            target = Path(f"/proc/{pid}/root{path}")
            if target.exists() and not target.is_dir():
                mounts.append(Mount(path, "/dev/null"))
        mounts += [Mount(d["path"], d["path"]) for d in self.config.get("devices") or ()
                   if d.get("path")]
        return mounts

    def restore_mounts(self, cgroup_binds: list[tuple[str, Path]]) -> list[Mount]:
        """``ext_mnt`` of a restore (runc 1.1 ``Restore``), cgroup binds as recorded at dump."""
        mounts = [Mount(m["destination"], m["source"])
                  for m in self.config.get("mounts") or () if m.get("device") == "bind"]
        mounts += [Mount(dest, str(source)) for dest, source in cgroup_binds]
        if self.config.get("mask_paths"):
            mounts.append(Mount("/dev/null", "/dev/null"))
        mounts += [Mount(d["path"], d["path"]) for d in self.config.get("devices") or ()
                   if d.get("path")]
        return mounts

    def unchanged_json(self) -> bytes:
        """The state without the fields a restore changes, as a JSON object missing its
        closing brace: serialised ahead of time (the config is most of the file), so the
        wake-up only formats five small fields (see :meth:`record_restored`)."""
        rest = {k: v for k, v in self.data.items() if k not in _CHANGED_BY_RESTORE}
        return json.dumps(rest).encode()[:-1]

    def record_restored(self, pid: int, unchanged: bytes | None = None) -> None:
        """Rewrite the fields a restore changes (see the module doc), atomically.

        :param unchanged: :meth:`unchanged_json`, if it was prepared before.
        """
        changed = {
            "init_process_pid": pid,
            "init_process_start": process_start(pid),
            "created": rfc3339_now(),
            "namespace_paths": {key: f"/proc/{pid}/ns/{_NS_FILES.get(key, key)}"
                                for key in self.data["namespace_paths"]},
            "external_descriptors": [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in range(3)],
        }
        head = unchanged if unchanged is not None else self.unchanged_json()
        separator = b", " if head != b"{" else b""
        write_atomic(self.path, head + separator + json.dumps(changed).encode()[1:])
        object.__setattr__(self, "data", {**self.data, **changed})


def _host_dir(host: list[_Mount], inside: _Mount) -> Path | None:
    """The host directory of a cgroup mounted in the container (same hierarchy, same root)."""
    controllers = inside.superoptions - {"rw", "ro"}
    for mount in host:
        if mount.superoptions - {"rw", "ro"} == controllers:
            root = mount.root.rstrip("/")
            if root and not (inside.root == root or inside.root.startswith(root + "/")):
                continue
            return Path(mount.mountpoint) / inside.root[len(root):].lstrip("/")
    return None


def load(runc_root: Path, container_id: str) -> RuncState:
    """Read and check ``<runc_root>/<id>/state.json``; raises :class:`UnsupportedState`."""
    path = runc_root / container_id / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnsupportedState(f"no runc state at {path}") from None
    except (OSError, ValueError) as exc:
        raise UnsupportedState(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UnsupportedState(f"{path} is not a JSON object")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise UnsupportedState(f"{path} lacks {', '.join(missing)} (a runc this plugin does "
                               "not know)")
    if not isinstance(data["config"], dict) or "rootfs" not in data["config"]:
        raise UnsupportedState(f"{path} has no config.rootfs")
    hooks = data["config"].get("Hooks") or {}
    used = [name for name in _RESTORE_HOOKS if hooks.get(name)]
    if used:
        raise UnsupportedState(f"the spec has OCI hooks ({', '.join(used)}) that runc runs on "
                               "restore")
    return RuncState(path, data)


def process_start(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot), as runc
    records it; FileNotFoundError when the process is gone."""
    start = procfs.process_start(pid)
    if start is None:
        raise FileNotFoundError(f"no process {pid}")
    return int(start)


def rfc3339_now() -> str:
    """UTC now in Go's RFC 3339 with nanoseconds, as runc writes ``created``."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + \
        f".{ns % 10**9:09d}Z"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)
