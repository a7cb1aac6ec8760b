"""What the installer asks the node: containerd's version, and restarting containerd.

With ``root`` other than ``/`` (the node's filesystem mounted into a container), the node's own
binaries run chrooted into it (``chroot(2)`` in the child, so the image needs no ``chroot``
program), so they find their libraries and the node's systemd.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
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


def _run(root: Path, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a program of the node (chrooted into ``root`` unless it is ``/``)."""
    enter: Callable[[], None] | None = None
    if str(root) != "/":
        def enter() -> None:
            os.chroot(root)
            os.chdir("/")
    # systemctl ignores restart requests when it believes it runs in a chroot; this one talks
    # to the node's own systemd on purpose
    env = {**os.environ, "SYSTEMD_IGNORE_CHROOT": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, preexec_fn=enter, env=env)


def _describe(root: Path, argv: list[str]) -> str:
    return " ".join(argv) + ("" if str(root) == "/" else f" (chrooted into {root})")


def containerd_version(root: Path, binary: str = "containerd") -> Version:
    """``containerd --version`` of the node, e.g. ``containerd github.com/containerd/containerd
    1.6.20~ds1 1.6.20~ds1-1+deb12u3`` -> 1.6.20~ds1."""
    argv = [binary, "--version"]
    what = _describe(root, argv)
    try:
        proc = _run(root, argv, 30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostError(f"cannot run {what}: {exc}; pass --containerd-version") from exc
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) < 3:
        raise HostError(f"{what} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[:300]}; pass --containerd-version")
    try:
        return Version.parse(fields[2])
    except ValueError as exc:
        raise HostError(f"{what}: {exc}; pass --containerd-version") from exc


def has_systemd(root: Path) -> bool:
    """Whether the node was booted with systemd (what ``sd_booted()`` checks)."""
    return (root / "run/systemd/system").is_dir()


def restart_containerd(root: Path, unit: str) -> None:
    """``systemctl restart <unit>`` on the node."""
    argv = ["systemctl", "restart", unit]
    what = _describe(root, argv)
    try:
        proc = _run(root, argv, 120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostError(f"cannot run {what}: {exc}") from exc
    if proc.returncode != 0:
        raise HostError(f"{what} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[:500]}")
