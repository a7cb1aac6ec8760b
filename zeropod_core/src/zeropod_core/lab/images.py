"""OCI images built offline from what is on this machine, as ``ctr images import`` tarballs.

No registry is reachable from these machines, so the project writes the OCI layout itself:
``oci-layout``, ``index.json`` (with the image name annotation containerd reads), a manifest, a
config and one uncompressed layer. Builds are deterministic (fixed mtimes and owners) and
cached by content, so a test session rebuilds nothing that did not change.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BUSYBOX_HTTPD = "docker.io/zeropod/busybox-httpd:v1"
COUNTER_APP = "docker.io/zeropod/counter-app:v1"
APP_DIR = Path(__file__).parent / "app"
DEFAULT_CACHE = Path(os.environ.get("ZEROPOD_IMAGE_CACHE", "/var/cache/zeropod/images"))
# Parts of the standard library the counter app never imports; leaving them out keeps the
# image at a fraction of the full library.
_STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
                "distutils", "config-3.11-x86_64-linux-gnu", "venv", "site-packages",
                "dist-packages", "unittest", "sqlite3", "curses", "dbm", "xmlrpc", "asyncio"}


@dataclass(frozen=True)
class ImageSpec:
    """What an image contains: files (path in image -> bytes or host path) and its config."""

    name: str
    files: dict[str, bytes | Path]
    symlinks: dict[str, str]
    cmd: list[str]
    env: list[str]
    exposed_ports: list[int]


def _tarinfo(path: str, *, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE,
             linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.type, info.linkname = size, mode, kind, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    return info


def _parents(paths: Iterable[str]) -> list[str]:
    dirs = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs)


def layer_tar(spec: ImageSpec) -> bytes:
    """The image's single layer as an uncompressed, reproducible tar."""
    buf = io.BytesIO()
    entries = sorted({**spec.files, **dict.fromkeys(spec.symlinks)})
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in _parents([*entries, "tmp/x", "proc/x", "sys/x", "dev/x", "etc/x"]):
            tar.addfile(_tarinfo(directory, mode=0o1777 if directory == "tmp" else 0o755,
                                 kind=tarfile.DIRTYPE))
        for path in entries:
            if path in spec.symlinks:
                tar.addfile(_tarinfo(path, kind=tarfile.SYMTYPE, linkname=spec.symlinks[path]))
                continue
            source = spec.files[path]
            data = source if isinstance(source, bytes) else source.read_bytes()
            mode = 0o644 if isinstance(source, bytes) else (source.stat().st_mode & 0o755)
            tar.addfile(_tarinfo(path, size=len(data), mode=mode), io.BytesIO(data))
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def oci_archive(spec: ImageSpec) -> bytes:
    """An OCI image layout tarball that ``ctr images import`` accepts."""
    layer = layer_tar(spec)
    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": spec.cmd,
            "Env": spec.env,
            "WorkingDir": "/",
            "ExposedPorts": {f"{p}/tcp": {} for p in spec.exposed_ports},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "zeropod lab image builder"}],
    }
    config_desc = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **manifest_desc,
            "annotations": {"io.containerd.image.name": spec.name,
                            "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[-1]},
        }],
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
                 "index.json": json.dumps(index, sort_keys=True).encode()}
        files.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_tarinfo(directory, mode=0o755, kind=tarfile.DIRTYPE))
        for path, data in files.items():
            tar.addfile(_tarinfo(path, size=len(data)), io.BytesIO(data))
    return out.getvalue()


def busybox_httpd_spec() -> ImageSpec:
    """A static busybox serving /www on port 8080 (the small server of the benchmarks)."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    applets = ["sh", "httpd", "cat", "echo", "ls", "sleep", "ps", "wget", "true", "false", "id",
               "kill", "env", "hostname", "tty", "printf", "head", "seq", "stty"]
    return ImageSpec(
        name=BUSYBOX_HTTPD,
        files={"bin/busybox": busybox.resolve(),
               "www/index.html": b"hello from zeropod busybox\n"},
        symlinks={f"bin/{a}": "busybox" for a in applets},
        cmd=["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
        env=["PATH=/bin"],
        exposed_ports=[8080],
    )


def _shared_libraries(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(Path(path))
    return libs


def counter_app_spec() -> ImageSpec:
    """This machine's Python, the part of its standard library the app needs, and the app."""
    python = Path("/usr/bin/python3").resolve()
    version = f"python{python.name.removeprefix('python')}"
    stdlib = Path("/usr/lib") / version
    files: dict[str, bytes | Path] = {f"usr/bin/{python.name}": python}
    for lib in _shared_libraries(python):
        files[str(lib).lstrip("/")] = lib.resolve()
    for path in sorted(stdlib.rglob("*")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in _STDLIB_SKIP or not path.is_file() or "__pycache__" in rel.parts[:-1]:
            continue
        if path.suffix in {".py", ".so"} or path.name.endswith(".pyc"):
            files[f"usr/lib/{version}/{rel}"] = path
    files["app/counter_app.py"] = (APP_DIR / "counter_app.py").read_bytes()
    return ImageSpec(
        name=COUNTER_APP,
        files=files,
        symlinks={"usr/bin/python3": python.name},
        cmd=["/usr/bin/python3", "-u", "/app/counter_app.py"],
        env=["PATH=/usr/bin", "PYTHONDONTWRITEBYTECODE=1"],
        exposed_ports=[8080],
    )


def build(spec: ImageSpec, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Write the image's archive into ``cache_dir`` (once per content) and return its path."""
    archive = oci_archive(spec)
    digest = hashlib.sha256(archive).hexdigest()[:16]
    path = cache_dir / f"{spec.name.rsplit('/', 1)[-1].replace(':', '-')}-{digest}.oci.tar"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(archive)
        tmp.rename(path)
    return path
