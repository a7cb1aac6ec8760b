"""The short-lived shim invocations: ``start`` and ``delete``.

``start`` must print the server's address and nothing else (containerd reads stdout and stderr
as one pipe). It creates the listening socket, then hands it to the warm shim template (see
:mod:`.template`), or, without one, **forks**: the child detaches (new session, stdio off
containerd's pipe) and becomes the server while the parent prints the address and exits.
containerd can connect at once: its requests wait in the socket's backlog until the server is
ready. Containers that belong together (one pod) share one shim, found by a grouping key, as
with containerd's runc shim.

This module runs on every container start, so it imports only what ``start`` needs (no
pathlib, json or hashlib on the common path).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from . import template
from .flags import ShimFlags

# OCI annotations that group a container with its pod's sandbox (CRI) or an explicit group.
GROUP_ANNOTATIONS = ("io.kubernetes.cri.sandbox-id", "io.containerd.runc.v2.group")
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def grouping_key(flags: ShimFlags, bundle: str) -> str:
    """The id whose shim this container uses: its sandbox's, its group's or its own."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as config:
            raw = config.read()
    except OSError:
        return flags.id
    if not any(key.encode() in raw for key in GROUP_ANNOTATIONS):
        return flags.id  # the common ctr case: no need to parse the spec
    import json

    annotations = json.loads(raw).get("annotations") or {}
    for key in GROUP_ANNOTATIONS:
        if annotations.get(key):
            return str(annotations[key])
    return flags.id


def socket_path(flags: ShimFlags, group: str) -> str:
    """``<containerd's folder>/s/<namespace>-<group>``; hashed when that is too long.

    On a node that is ``/run/containerd/s/...``, next to containerd's own shims' sockets; a
    private containerd keeps it in its own folder.
    """
    folder = os.path.join(os.path.dirname(flags.address), "s")
    path = os.path.join(folder, f"zeropod-{flags.namespace}-{group}")
    if len(path) <= _MAX_SOCKET_PATH and "/" not in group:
        return path
    import hashlib

    digest = hashlib.sha256(f"{flags.address}|{flags.namespace}|{group}".encode()).hexdigest()
    return os.path.join(folder, f"zeropod-{digest[:40]}")


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def start(flags: ShimFlags) -> int:
    bundle = os.getcwd()
    path = socket_path(flags, grouping_key(flags, bundle))
    address = f"unix://{path}"
    if os.path.exists(path):
        if _listening(path):  # the pod's shim already runs: reuse it
            _write(os.path.join(bundle, "address"), address)
            sys.stdout.write(address)
            return 0
        os.unlink(path)
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(128)
    _write(os.path.join(bundle, "address"), address)
    sys.stdout.flush()
    flags = flags.with_socket(path)
    if not (template.enabled() and template.request_shim(flags, listener, bundle)):
        _fork_server(flags, listener)  # the cold path for this container...
        if template.enabled():
            template.spawn_template(flags)  # ...and a warm template for the next ones
    listener.close()
    sys.stdout.write(address)
    return 0


def _write(path: str, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)


def _fork_server(flags: ShimFlags, listener: socket.socket) -> None:
    if os.fork() == 0:
        template.detach()
        from .server import run

        code = 1
        try:
            code = run(flags, listener)
        finally:
            os._exit(code)


def delete(flags: ShimFlags) -> int:
    """Clean up a bundle whose shim is gone: runc delete, unmount, print a DeleteResponse."""
    import contextlib
    import json
    import subprocess

    from zeropod_core.api import task

    from . import mounts

    bundle = flags.bundle or os.getcwd()
    try:
        with open(os.path.join(bundle, "options.json")) as options_file:
            options = json.load(options_file)
    except (OSError, ValueError):
        options = {}
    root = options.get("root") or os.path.join(os.path.dirname(flags.address), "runc")
    subprocess.run([options.get("binary_name") or "runc", "--root",
                    os.path.join(root, flags.namespace), "delete", "--force", flags.id],
                   stdin=subprocess.DEVNULL, capture_output=True)
    with contextlib.suppress(OSError):
        mounts.unmount_all(os.path.join(bundle, "rootfs"))
    response = task.DeleteResponse(exit_status=128 + 9)
    response.exited_at.FromNanoseconds(time.time_ns())
    sys.stdout.buffer.write(response.SerializeToString())
    return 0
