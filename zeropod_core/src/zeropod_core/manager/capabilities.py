"""What this node can do for zeropod: checked once at manager start-up, shown in /healthz."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

BPF_MAGIC = 0xCAFE4A11


def _criu() -> dict[str, Any]:
    path = shutil.which("criu")
    if path is None:
        return {"available": False, "reason": "criu not found on PATH"}
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": str(exc)}
    version = next((line.split(":", 1)[1].strip() for line in out.stdout.splitlines()
                    if line.startswith("Version:")), "")
    return {"available": bool(version), "version": version, "path": path}


def _bpffs(root: str) -> dict[str, Any]:
    mounted = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == "bpf":
                mounted.append(fields[1])
    return {"mounts": mounted, "pin_root": root,
            "pin_root_mounted": any(root == m or root.startswith(m + "/") for m in mounted)}


def core_capabilities() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "criu": _criu(),
        "bpffs": _bpffs(os.environ.get("ZEROPOD_BPF_ROOT", "/run/zeropod/bpf")),
        "cgroup2_only": os.path.exists("/sys/fs/cgroup/cgroup.controllers"),
    }
