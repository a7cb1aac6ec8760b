"""Manager-side hooks of ``zeropod-ebpf-redirect``: tell the node whether the redirector loads.

At manager start-up (once per node) the compiled object is loaded for real through libbpf into
a private bpffs in a temporary folder, then closed and unmounted: the kernel's verifier has
the last word on whether waking on traffic can work here, and ``/healthz`` shows its answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import time
from typing import Any

from zeropod_core import hookimpl

from .shim_plugin import OBJECT_PATH

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def check_redirector() -> dict[str, Any]:
    """Load (and unload) the redirector object; report whether and how fast it loaded."""
    if not OBJECT_PATH.is_file():
        return {"loads": False, "error": f"{OBJECT_PATH} not built"}
    from .libbpf import BpfObject

    folder = tempfile.mkdtemp(prefix="zeropod-bpf-check-")
    mounted = _libc.mount(b"bpf", folder.encode(), b"bpf", 0, None) == 0
    try:
        if not mounted:
            err = ctypes.get_errno()
            return {"loads": False, "error": f"cannot mount bpffs: {os.strerror(err)}"}
        started = time.monotonic()
        with BpfObject(OBJECT_PATH, pin_root=folder) as obj:
            obj.load()
        return {"loads": True, "object": str(OBJECT_PATH),
                "load_ms": round((time.monotonic() - started) * 1e3, 1)}
    except OSError as exc:
        return {"loads": False, "object": str(OBJECT_PATH), "error": str(exc)}
    finally:
        if mounted:
            _libc.umount2(folder.encode(), MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(folder)


@hookimpl
def zeropod_node_capabilities() -> dict[str, Any]:
    return {"redirector": check_redirector()}
