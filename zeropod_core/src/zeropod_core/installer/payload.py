"""Copy the node payload (shim, CRIU, Python) from the installer's image to the node.

The payload is a folder whose programs refer to each other by absolute paths (the shim's
interpreter, CRIU's loader), so it is copied to the *same* path on the node. The copy is
incremental (files with the same size, mtime and mode are skipped, files gone from the source
are removed, except bytecode Python wrote there) and carries a marker file, so that a second
run changes nothing and uninstalling removes only what the installer copied.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("zeropod.installer")

MARKER = ".zeropod-payload"


class PayloadError(RuntimeError):
    """The payload cannot be copied; the message names the path."""


def target(root: Path, source: str) -> Path:
    return root / source.lstrip("/")


def _same(src: Path, dst: Path) -> bool:
    if src.is_symlink() or dst.is_symlink():
        return src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    if not dst.is_file():
        return False
    a, b = src.stat(), dst.stat()
    return (a.st_size, a.st_mtime_ns, a.st_mode) == (b.st_size, b.st_mtime_ns, b.st_mode)


def sync(root: Path, source: str, *, dry_run: bool = False) -> bool:
    """Make ``<root><source>`` a copy of ``source``; True if something changed."""
    src = Path(source)
    if not src.is_absolute() or not src.is_dir():
        raise PayloadError(f"--payload {source}: not an absolute path of a folder")
    dst = target(root, source)
    if dst.exists() and dst.resolve() == src.resolve():
        return False  # running on the node itself: the payload is already there
    if dst.exists() and not (dst / MARKER).exists() and any(dst.iterdir()):
        raise PayloadError(f"{source} exists on the node and was not copied by "
                           "zeropod-installer; remove it or choose another --payload path")
    changed = False
    wanted: set[Path] = set()
    for folder, dirs, files in os.walk(src):
        rel = Path(folder).relative_to(src)
        wanted.add(rel)
        for name in dirs + files:
            entry, copy = Path(folder) / name, dst / rel / name
            wanted.add(rel / name)
            if entry.is_dir() and not entry.is_symlink():
                if not copy.is_dir() or copy.is_symlink():
                    changed = True
                    if not dry_run:
                        _remove(copy)
                        copy.mkdir(parents=True)
                continue
            if _same(entry, copy):
                continue
            changed = True
            if not dry_run:
                _remove(copy)
                copy.parent.mkdir(parents=True, exist_ok=True)
                if entry.is_symlink():
                    copy.symlink_to(os.readlink(entry))
                else:
                    shutil.copy2(entry, copy)
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    if dst.is_dir():
        for folder, dirs, files in os.walk(dst, topdown=False):
            rel = Path(folder).relative_to(dst)
            for name in files + dirs:
                if rel / name not in wanted and (rel / name) != Path(MARKER) \
                        and "__pycache__" not in (rel / name).parts:  # Python's own
                    changed = True
                    if not dry_run:
                        _remove(Path(folder) / name)
    if not dry_run:
        dst.mkdir(parents=True, exist_ok=True)
        (dst / MARKER).write_text(f"copied by zeropod-installer from the image's {source}\n")
    if changed:
        log.info("copied the payload", extra={"path": source})
    return changed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def remove(root: Path, source: str, *, dry_run: bool = False) -> bool:
    """Remove the copied payload (only if the installer's marker is in it)."""
    dst = target(root, source)
    if Path(source).resolve() == dst.resolve() or not (dst / MARKER).is_file():
        return False
    if not dry_run:
        shutil.rmtree(dst)
        log.info("removed the payload", extra={"path": source})
    return True
