"""What identifies "this boot with this CRIU": the key of the per-node caches in /run/zeropod.

CRIU's kernel-feature cache and zeropod's feature-check result are valid for one kernel boot
and one CRIU build. ``/run`` is not a tmpfs everywhere (it is ext4 on the project's VMs), so a
file there may survive a reboot: the boot id and CRIU's version are recorded next to it and
compared before it is trusted.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
STATE_DIR = Path("/run/zeropod")


class CriuNotFound(Exception):
    """No usable ``criu`` binary."""


def find_criu() -> str:
    """The ``criu`` on PATH (the one runc runs), as an absolute path."""
    path = shutil.which("criu")
    if path is None:
        raise CriuNotFound("criu not found on PATH: run scripts/setup")
    return path


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


@functools.lru_cache(maxsize=8)
def criu_version(criu: str) -> str:
    """``criu --version`` (version and git id lines), once per process and binary."""
    # A subprocess is fine here: this runs once per shim process, before any container (and
    # before the shim's reaper handles SIGCHLD on the loop, which this call blocks).
    proc = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise CriuNotFound(f"{criu} --version failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return " ".join(line.strip() for line in proc.stdout.splitlines() if line.strip())


@dataclass(frozen=True)
class NodeKey:
    """The boot and the CRIU build a cached file belongs to."""

    boot_id: str
    criu_version: str

    @classmethod
    def current(cls, criu: str) -> NodeKey:
        return cls(boot_id(), criu_version(criu))

    def as_dict(self) -> dict[str, str]:
        return {"boot_id": self.boot_id, "criu_version": self.criu_version}
