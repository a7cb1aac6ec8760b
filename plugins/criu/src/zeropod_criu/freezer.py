"""Freezing the container's cgroup before the dump, so CRIU does not sleep in its freezer loop.

CRIU (``seize.c``) writes FROZEN, reads the state back and, unless it already reads FROZEN,
sleeps 100 ms before looking again: a dump of a small server then spends 100 of its ~200 ms
waiting. The v1 freezer usually needs well under a millisecond, so the shim freezes first and
spins until the kernel reports FROZEN; CRIU then finds the cgroup frozen and goes straight on.

The freezer is the one runc uses: the v1 ``freezer`` controller when it is mounted (also on
hybrid hosts), else cgroup v2's ``cgroup.freeze``. Paths come from ``/proc/<pid>/cgroup`` and
``/proc/self/mountinfo``, so a non-standard mount point works too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

# Yield to the event loop (no sleep) for the first polls: freezing usually takes 0.3-0.5 ms.
_TIGHT_POLLS = 200
_POLL_S = 0.001


class FreezeError(Exception):
    """The cgroup could not be frozen (or thawed) in time."""


@dataclass(frozen=True)
class _Mount:
    root: str
    mountpoint: str
    fstype: str
    superoptions: frozenset[str]


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _cgroup_mounts(mountinfo: str) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        if rest[0] in ("cgroup", "cgroup2"):
            mounts.append(_Mount(_unescape(fields[3]), _unescape(fields[4]), rest[0],
                                 frozenset(rest[2].split(","))))
    return mounts


def _below(mount: _Mount, cgroup_path: str) -> Path | None:
    """The directory of ``cgroup_path`` under ``mount``, if the mount shows it."""
    root = mount.root.rstrip("/")
    if root and cgroup_path != root and not cgroup_path.startswith(root + "/"):
        return None
    return Path(mount.mountpoint) / cgroup_path[len(root):].lstrip("/")


@dataclass(frozen=True)
class Freezer:
    """The freezer of one cgroup: ``v1`` (``freezer.state``) or ``v2`` (``cgroup.freeze``)."""

    kind: str
    directory: Path

    @classmethod
    def for_pid(cls, pid: int, *, proc: Path = Path("/proc")) -> Freezer | None:
        """The freezer of ``pid``'s cgroup, or None when neither freezer is available."""
        try:
            cgroups = (proc / str(pid) / "cgroup").read_text()
            mounts = _cgroup_mounts((proc / "self" / "mountinfo").read_text())
        except OSError:
            return None
        unified = None
        for line in cgroups.splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if "freezer" in controllers.split(","):
                for mount in mounts:
                    if mount.fstype == "cgroup" and "freezer" in mount.superoptions:
                        directory = _below(mount, path)
                        if directory is not None and (directory / "freezer.state").exists():
                            return cls("v1", directory)
            elif hierarchy == "0" and not controllers:
                unified = path
        if unified is not None:
            for mount in mounts:
                if mount.fstype == "cgroup2":
                    directory = _below(mount, unified)
                    if directory is not None and (directory / "cgroup.freeze").exists():
                        return cls("v2", directory)
        return None

    def _write(self, frozen: bool) -> None:
        if self.kind == "v1":
            (self.directory / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        else:
            (self.directory / "cgroup.freeze").write_text("1" if frozen else "0")

    def state(self) -> str:
        """``FROZEN``, ``FREEZING`` or ``THAWED`` (v2 reports only FROZEN or THAWED)."""
        if self.kind == "v1":
            return (self.directory / "freezer.state").read_text().strip()
        for line in (self.directory / "cgroup.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "frozen":
                return "FROZEN" if value.strip() == "1" else "THAWED"
        return "THAWED"

    async def freeze(self, timeout_s: float = 2.0) -> float:
        """Freeze and wait until the kernel reports FROZEN; returns the seconds it took.

        Raises :class:`FreezeError` on timeout (the cgroup is thawed again) or a write error.
        """
        start = time.monotonic()
        try:
            self._write(True)
        except OSError as exc:
            raise FreezeError(f"cannot freeze {self.directory}: {exc}") from exc
        polls = 0
        while True:
            try:
                if self.state() == "FROZEN":
                    return time.monotonic() - start
            except OSError as exc:
                raise FreezeError(f"cannot read the freezer state of {self.directory}: "
                                  f"{exc}") from exc
            if time.monotonic() - start > timeout_s:
                self.thaw()
                raise FreezeError(f"{self.directory} not frozen after {timeout_s:g} s")
            polls += 1
            await asyncio.sleep(0 if polls < _TIGHT_POLLS else _POLL_S)

    def thaw(self) -> bool:
        """Thaw; True if the kernel reports THAWED afterwards (False also if the cgroup is gone)."""
        try:
            self._write(False)
            return self.state() == "THAWED"
        except OSError:
            return False
