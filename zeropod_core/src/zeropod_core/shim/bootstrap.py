"""The short-lived shim invocations: ``start`` and ``delete``.

``start`` must print the server's address and nothing else (containerd reads stdout and stderr
as one pipe), so it creates the listening socket itself, hands it to a detached server process
as fd 3 and exits: containerd can connect at once, before the server has finished importing.
Containers that belong together (one pod) share one shim, found by a grouping key, as with
containerd's runc shim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .flags import ShimFlags, server_argv

# OCI annotations that group a container with its pod's sandbox (CRI) or an explicit group.
GROUP_ANNOTATIONS = ("io.kubernetes.cri.sandbox-id", "io.containerd.runc.v2.group")


def grouping_key(flags: ShimFlags, bundle: Path) -> str:
    """The id whose shim this container uses: its sandbox's, its group's or its own."""
    try:
        annotations = json.loads((bundle / "config.json").read_text()).get("annotations") or {}
    except (OSError, ValueError):
        annotations = {}
    for key in GROUP_ANNOTATIONS:
        if annotations.get(key):
            return str(annotations[key])
    return flags.id


def socket_path(flags: ShimFlags, group: str) -> Path:
    """``<containerd's folder>/s/<sha256>``, the layout of containerd's own shims.

    On a node that is ``/run/containerd/s/...``; a private containerd keeps it in its folder.
    """
    digest = hashlib.sha256(f"{flags.address}|{flags.namespace}|{group}".encode()).hexdigest()
    return Path(flags.address).parent / "s" / digest


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def start(flags: ShimFlags) -> int:
    bundle = Path.cwd()
    path = socket_path(flags, grouping_key(flags, bundle))
    address = f"unix://{path}"
    if path.exists():
        if _listening(path):  # the pod's shim already runs: reuse it
            (bundle / "address").write_text(address)
            sys.stdout.write(address)
            return 0
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(128)
    server = [sys.argv[0], *server_argv(flags, str(path))]
    # The server inherits the listener as fd 3; its own session, so containerd's signals and
    # this process's exit do not reach it.
    os.dup2(listener.fileno(), 3, inheritable=True)
    subprocess.Popen(server, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, pass_fds=(3,), start_new_session=True,
                     cwd=bundle)
    (bundle / "address").write_text(address)
    sys.stdout.write(address)
    return 0


def delete(flags: ShimFlags) -> int:
    """Clean up a bundle whose shim is gone: runc delete, unmount, print a DeleteResponse."""
    from zeropod_core.api import task

    from . import mounts

    bundle = Path(flags.bundle or Path.cwd())
    try:
        options = json.loads((bundle / "options.json").read_text())
    except (OSError, ValueError):
        options = {}
    root = Path(options.get("root") or Path(flags.address).parent / "runc") / flags.namespace
    subprocess.run([options.get("binary_name") or "runc", "--root", str(root), "delete",
                    "--force", flags.id], stdin=subprocess.DEVNULL, capture_output=True)
    with contextlib.suppress(OSError):
        mounts.unmount_all(str(bundle / "rootfs"))
    response = task.DeleteResponse(exit_status=128 + 9)
    response.exited_at.FromNanoseconds(time.time_ns())
    sys.stdout.buffer.write(response.SerializeToString())
    return 0
