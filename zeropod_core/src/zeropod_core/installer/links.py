"""The installer's files in the opt folder: links to the shim and to CRIU.

``<opt>/bin/containerd-shim-zeropod-v2`` is the runtime's ``runtime_path`` and
``<opt>/bin/criu`` its ``CriuPath`` (runc's ``--criu``), so containerd's configuration names
stable paths and an upgrade only moves links. The zeropod shim also looks ``criu`` up on its
PATH (the criu plugin's feature checks), and containerd puts only its own opt folder's ``bin``
first on the PATH of the shims it starts; so when that folder is not ``<opt>``, a ``criu`` link
goes there too, unless a ``criu`` that is not ours is already there (then it is left alone and
the installer says so).
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("zeropod.installer")

SHIM_BINARY = "containerd-shim-zeropod-v2"


@dataclass(frozen=True)
class Link:
    path: str  # on the node
    target: str  # on the node
    foreign_ok: bool = False  # an existing file that is not ours stays (True) or is replaced


def opt_links(opt: str, shim: str, criu: str, containerd_opt: str) -> list[Link]:
    links = [Link(posixpath.join(opt, "bin", SHIM_BINARY), shim),
             Link(posixpath.join(opt, "bin", "criu"), criu)]
    if posixpath.normpath(containerd_opt) != posixpath.normpath(opt):
        links.append(Link(posixpath.join(containerd_opt, "bin", "criu"),
                          posixpath.join(opt, "bin", "criu"), foreign_ok=True))
    return links


def _host(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def link_state(root: Path, link: Link) -> str:
    """``ok`` (points at the target), ``missing``, ``other-link`` or ``foreign`` (a file)."""
    host = _host(root, link.path)
    if host.is_symlink():
        return "ok" if os.readlink(host) == link.target else "other-link"
    return "foreign" if host.exists() else "missing"


def ensure(root: Path, link: Link, *, dry_run: bool = False) -> bool:
    """Make ``link`` point at its target; True if something changed."""
    state = link_state(root, link)
    if state == "ok":
        return False
    if link.foreign_ok and (state == "foreign" or (
            state == "other-link" and not _ours(root, link))):
        log.warning("a file that zeropod-installer did not write is in the way; leaving it",
                    extra={"path": link.path, "wanted_target": link.target})
        return False
    if dry_run:
        return True
    host = _host(root, link.path)
    host.parent.mkdir(parents=True, exist_ok=True)
    tmp = host.with_name(f".{host.name}.zeropod-installer.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(link.target)
    os.replace(tmp, host)
    log.info("linked", extra={"path": link.path, "target": link.target})
    return True


def _ours(root: Path, link: Link) -> bool:
    host = _host(root, link.path)
    return host.is_symlink() and os.readlink(host) == link.target


def remove(root: Path, link: Link, *, dry_run: bool = False) -> bool:
    """Remove ``link`` if it is the installer's (for a ``foreign_ok`` link: only if it points at
    the target); True if something changed."""
    host = _host(root, link.path)
    if not host.is_symlink() or (link.foreign_ok and not _ours(root, link)):
        return False
    if not dry_run:
        host.unlink()
        log.info("removed link", extra={"path": link.path})
        try:
            host.parent.rmdir()  # <opt>/bin, when nothing else is in it
            host.parent.parent.rmdir()
        except OSError:
            pass
    return True
