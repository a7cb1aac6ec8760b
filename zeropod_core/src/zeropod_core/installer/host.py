"""What the installer asks the node: containerd's version, and restarting containerd.

With ``root`` other than ``/`` (the node's filesystem mounted into a container), the node's own
binaries run through ``chroot``, so they find their libraries and the node's systemd.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


class HostError(RuntimeError):
    """A command on the node failed; the message says which and what to do."""


@dataclass(frozen=True)
class Version:
    text: str
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text.strip())
        if not match:
            raise ValueError(f"not a containerd version: {text!r} (expected e.g. 1.7.24 or 2.1.9)")
        return cls(text.strip(), int(match[1]), int(match[2]))


def _command(root: Path, argv: list[str]) -> list[str]:
    return argv if str(root) == "/" else ["chroot", str(root), *argv]


def containerd_version(root: Path, binary: str = "containerd") -> Version:
    """``containerd --version`` of the node, e.g. ``containerd github.com/containerd/containerd
    1.6.20~ds1 1.6.20~ds1-1+deb12u3`` -> 1.6.20~ds1."""
    argv = _command(root, [binary, "--version"])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostError(f"cannot run {' '.join(argv)}: {exc}; pass --containerd-version") from exc
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) < 3:
        raise HostError(f"{' '.join(argv)} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[:300]}; pass --containerd-version")
    try:
        return Version.parse(fields[2])
    except ValueError as exc:
        raise HostError(f"{' '.join(argv)}: {exc}; pass --containerd-version") from exc


def has_systemd(root: Path) -> bool:
    """Whether the node was booted with systemd (what ``sd_booted()`` checks)."""
    return (root / "run/systemd/system").is_dir()


def restart_containerd(root: Path, unit: str) -> None:
    """``systemctl restart <unit>`` on the node."""
    argv = _command(root, ["systemctl", "restart", unit])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostError(f"cannot run {' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise HostError(f"{' '.join(argv)} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[:500]}")
