"""The node image the ``zeropod-node`` DaemonSet runs, built offline like the lab's test images.

``scripts/build-node-payload`` assembles ``/opt/zeropod/node`` (Python with its libraries and
loader, a virtual environment with zeropod-core and the plugins, the shim's launcher, CRIU);
this module packs it into a one-layer OCI archive (:mod:`.images`) that ``ctr images import``
accepts. Both steps are cached by content: the payload by a hash of the sources it is built
from, the archive by its own digest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from . import images

NODE = "/opt/zeropod/node"
NODE_IMAGE = "docker.io/zeropod/node:dev"
REPO = Path(__file__).resolve().parents[4]
BUILD_SCRIPT = REPO / "scripts" / "build-node-payload"
# per checkout (not the shared image cache): each build of changed sources replaces the last
CACHE = REPO / ".venv" / "zeropod-node-image"


def _sources_digest() -> str:
    """What the payload is built from: the workspace's files under version control (build
    outputs such as ``build/`` folders left by pip are not), the build script, this machine's
    Python and CRIU."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard",
         "zeropod_core", "plugins", "scripts/build-node-payload"],
        check=True, capture_output=True, text=True).stdout.split("\n")
    digest = hashlib.sha256()
    for name in sorted(filter(None, listed)):
        path = REPO / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    for binary in (os.path.realpath("/usr/bin/python3"), os.path.realpath("/usr/local/sbin/criu")):
        stat = os.stat(binary)
        digest.update(f"{binary}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build_payload(cache_dir: Path = CACHE) -> Path:
    """The payload folder (built once per content of its sources)."""
    target = cache_dir / f"node-payload-{_sources_digest()}"
    if (target / "bin" / "zeropod-manager").exists():
        return target
    for stale in cache_dir.glob("node-*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = target.with_name(target.name + ".building")
    subprocess.run([str(BUILD_SCRIPT), str(building)], check=True, stdout=subprocess.DEVNULL)
    building.rename(target)
    return target


def node_image_spec(payload: Path) -> images.ImageSpec:
    """The image: the payload at /opt/zeropod/node, the manager as its command."""
    files: dict[str, bytes | Path] = {}
    symlinks: dict[str, str] = {}
    prefix = NODE.lstrip("/")
    for folder, dirs, names in os.walk(payload):
        for name in dirs + names:
            path = Path(folder) / name
            rel = f"{prefix}/{path.relative_to(payload)}"
            if path.is_symlink():
                symlinks[rel] = os.readlink(path)
            elif path.is_file():
                files[rel] = path
    return images.ImageSpec(
        name=NODE_IMAGE, files=files, symlinks=symlinks,
        cmd=[f"{NODE}/bin/zeropod-manager", "--listen=0.0.0.0:8080"],
        # the node's containerd and systemctl run chrooted with this PATH too
        env=[f"PATH={NODE}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "PYTHONDONTWRITEBYTECODE=1"],
        exposed_ports=[8080])


def build(cache_dir: Path = CACHE) -> Path:
    """The node image's archive, for ``ctr images import`` (older archives are removed)."""
    archive = images.build(node_image_spec(build_payload(cache_dir)), cache_dir)
    for stale in cache_dir.glob("node-*.oci.tar"):
        if stale != archive:
            stale.unlink()
    return archive


if __name__ == "__main__":
    print(build())
