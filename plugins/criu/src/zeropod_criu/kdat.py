"""CRIU's kernel-feature cache (``/run/criu.kdat``) on hosts where CRIU will not keep it.

Every CRIU run starts with ``kerndat_init()``: 17 forks, a network namespace, an iptables exec
and more, 22-32 ms here, on every dump and every restore. CRIU caches the result in
``/run/criu.kdat``, but (CRIU 4.2 ``kerndat.c``):

* it *saves* the cache only when ``/run`` is a tmpfs (so the cache dies with the boot); on
  these hosts ``/run`` is ext4 and every run probes again;
* the save opens ``/run/criu.kdat.tmp`` with ``O_EXCL`` and, on a non-tmpfs ``/run``, never
  removes it: a stale empty ``criu.kdat.tmp`` stays behind and blocks every later save (also
  after ``/run`` became a tmpfs);
* it *loads* ``/run/criu.kdat`` from any filesystem, checking only its size and two magic
  numbers.

So on a non-tmpfs ``/run`` the plugin generates the cache itself, once per boot and CRIU build:
``criu check`` runs in a private mount namespace whose ``/run`` is a fresh tmpfs (there CRIU
saves it), the file is copied out and installed atomically as ``/run/criu.kdat``. The boot id
and CRIU's version go to ``/run/zeropod/criu-kdat.stamp``; a reboot (``/run`` may keep files
across it) or a CRIU upgrade regenerates it. A stale ``criu.kdat.tmp`` older than a minute is
removed in both cases (younger ones may belong to a CRIU saving right now).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .node import STATE_DIR, NodeKey

log = logging.getLogger("zeropod.criu.kdat")

RUN_DIR = Path("/run")
KDAT_NAME = "criu.kdat"
STAMP = STATE_DIR / "criu-kdat.stamp"
TMPFS_MAGIC = 0x01021994
STALE_TMP_AGE_S = 60.0
GENERATE_TIMEOUT_S = 30.0

# In a new mount namespace (changes stay private): a fresh tmpfs on /run, where CRIU keeps the
# cache it probes, then print it. "$1" is the criu binary.
_GENERATE_SCRIPT = (
    'mount -t tmpfs -o mode=0755,size=4m zeropod-kdat /run || exit 90\n'
    '"$1" check >/dev/null 2>&1\n'
    'exec cat /run/criu.kdat\n'
)


@dataclass(frozen=True)
class KdatResult:
    """What :func:`ensure_kdat_cache` did.

    :ivar action: ``tmpfs`` (CRIU keeps the cache itself), ``current`` (ours is still valid),
        ``generated`` (installed now) or ``failed`` (see ``detail``).
    """

    action: str
    detail: str = ""
    duration_s: float = 0.0
    removed_stale_tmp: bool = False

    @property
    def cache_available(self) -> bool:
        return self.action in ("current", "generated")


def is_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs (``statfs(2)``'s ``f_type``, as CRIU checks it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs({path}): {os.strerror(err)}")
    (f_type,) = struct.unpack_from("l", buf, 0)  # f_type is the first field everywhere
    return bool(f_type == TMPFS_MAGIC)


def remove_stale_tmp(run_dir: Path = RUN_DIR, *, min_age_s: float = STALE_TMP_AGE_S) -> bool:
    """Remove CRIU's ``criu.kdat.tmp`` if it is a regular file older than ``min_age_s``.

    A directory there is left alone: that is how a benchmark blocks CRIU's saves on purpose.
    """
    tmp = run_dir / f"{KDAT_NAME}.tmp"
    try:
        st = tmp.lstat()
    except FileNotFoundError:
        return False
    if not tmp.is_file() or time.time() - st.st_mtime < min_age_s:
        return False
    tmp.unlink(missing_ok=True)
    log.info("removed a stale CRIU kdat temporary file (it blocks CRIU's cache saves)",
             extra={"path": str(tmp), "age_s": round(time.time() - st.st_mtime)})
    return True


def generate_kdat(criu: str) -> bytes:
    """Run ``criu check`` where ``/run`` is a tmpfs and return the cache it saved there."""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _GENERATE_SCRIPT,
         "zeropod-kdat", criu],
        capture_output=True, timeout=GENERATE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not proc.stdout:
        reason = proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
        raise RuntimeError(f"criu check in a private mount namespace saved no cache: {reason}")
    return proc.stdout


def install_kdat(data: bytes, run_dir: Path = RUN_DIR) -> Path:
    """Atomically make ``data`` the host's ``criu.kdat`` (a CRIU run never sees half a file)."""
    target = run_dir / KDAT_NAME
    tmp = run_dir / f".{KDAT_NAME}.zeropod-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return target


def _stamp_matches(stamp: Path, key: NodeKey, kdat: Path) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
        size = kdat.stat().st_size
    except (OSError, ValueError):
        return False
    return (isinstance(recorded, dict) and recorded.get("key") == key.as_dict()
            and recorded.get("kdat_bytes") == size)


def _write_stamp(stamp: Path, key: NodeKey, size: int) -> None:
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key.as_dict(), "kdat_bytes": size,
                               "generated_at": time.time()}))
    tmp.replace(stamp)


def ensure_kdat_cache(criu: str, key: NodeKey, *, run_dir: Path = RUN_DIR,
                      stamp: Path = STAMP) -> KdatResult:
    """Make sure CRIU finds a valid ``criu.kdat`` in ``run_dir``; never raises.

    Shims of one node may start together: a lock file next to the stamp lets one of them
    generate while the others wait and then find it current.
    """
    start = time.monotonic()
    try:
        removed = remove_stale_tmp(run_dir)
        if is_tmpfs(run_dir):
            return KdatResult("tmpfs", "CRIU keeps its cache on the tmpfs itself",
                              time.monotonic() - start, removed)
        kdat = run_dir / KDAT_NAME
        stamp.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(stamp.with_name(stamp.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _stamp_matches(stamp, key, kdat):
                return KdatResult("current", str(kdat), time.monotonic() - start, removed)
            data = generate_kdat(criu)
            install_kdat(data, run_dir)
            _write_stamp(stamp, key, len(data))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return KdatResult("failed", str(exc), time.monotonic() - start)
    duration = time.monotonic() - start
    log.info("installed CRIU's kernel-feature cache (/run is not a tmpfs, CRIU would probe "
             "the kernel on every dump and restore)",
             extra={"path": str(kdat), "bytes": len(data), "duration_ms": round(duration * 1e3, 1),
                    "boot_id": key.boot_id, "criu_version": key.criu_version})
    return KdatResult("generated", str(kdat), duration, removed)
