"""Fixtures for the installer tests: a node's filesystem in a temp folder, real containerd
binaries (Debian's 1.6/1.7 and sid's 2.1 from scripts/fetch-containerd2) to produce default
configs and to read the installer's result back with ``containerd config dump``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALLER = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "zeropod-installer"


@dataclass(frozen=True)
class Containerd:
    """One real containerd binary and its major version."""

    binary: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def default_config(self) -> str:
        return subprocess.run([self.binary, "config", "default"], check=True,
                              capture_output=True, text=True).stdout


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], check=True, capture_output=True, text=True)
    return out.stdout.split()[2]


@pytest.fixture(scope="session")
def containerd1() -> Containerd:
    """The distro's containerd (1.6 on Debian 12, 1.7 on 13), or $ZEROPOD_TEST_CONTAINERD1."""
    binary = os.environ.get("ZEROPOD_TEST_CONTAINERD1") or shutil.which("containerd")
    assert binary, "containerd is missing: run scripts/setup"
    return Containerd(binary, _version(binary))


@pytest.fixture(scope="session")
def containerd2() -> Containerd:
    """containerd 2.1 from Debian sid (scripts/fetch-containerd2 prints its folder)."""
    folder = subprocess.run([str(REPO / "scripts" / "fetch-containerd2")], check=True,
                            capture_output=True, text=True).stdout.strip()
    binary = str(Path(folder) / "containerd")
    return Containerd(binary, _version(binary))


@pytest.fixture(params=["1.x", "2.x"])
def containerd(request: pytest.FixtureRequest) -> Containerd:
    fixture = "containerd1" if request.param == "1.x" else "containerd2"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


@dataclass
class Node:
    """A node's filesystem under ``root``: /etc/containerd and stand-ins for the shim and CRIU
    (the installer links them and never runs them)."""

    root: Path
    containerd: Containerd
    files: dict[str, bytes | None] = field(default_factory=dict)

    SHIM = "/usr/lib/zeropod/bin/containerd-shim-zeropod-v2"
    CRIU = "/usr/lib/zeropod/criu/sbin/criu"

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def write(self, node_path: str, text: str) -> None:
        self.path(node_path).parent.mkdir(parents=True, exist_ok=True)
        self.path(node_path).write_text(text)

    def snapshot(self) -> dict[str, bytes | str]:
        """Every file and link under the root (links as ``-> target``)."""
        found: dict[str, bytes | str] = {}
        for path in sorted(self.root.rglob("*")):
            rel = "/" + str(path.relative_to(self.root))
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                found[rel] = path.read_bytes()
        return found

    def run(self, *args: str, check: bool = True,
            version: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the installer (with ``--containerd-version`` unless ``version`` is False)."""
        argv = [str(INSTALLER), "--host-root", str(self.root), "--shim", self.SHIM,
                "--criu", self.CRIU, *args]
        if version:
            argv += ["--containerd-version", self.containerd.version]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"zeropod-installer exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def install(self, *args: str) -> dict[str, Any]:
        return json.loads(self.run(*args).stdout)  # type: ignore[no-any-return]

    def uninstall(self) -> dict[str, Any]:
        return json.loads(self.run("--uninstall").stdout)  # type: ignore[no-any-return]

    def dump(self) -> dict[str, Any]:
        """``containerd config dump`` of the node's /etc/containerd/config.toml: the real
        containerd reads the files where the node has them (a private mount namespace binds
        the node's /etc/containerd over this machine's)."""
        # no config.toml reads like an empty one (1.6's dump insists on an existing file)
        config = "/etc/containerd/config.toml" if self.path(
            "/etc/containerd/config.toml").exists() else "/dev/null"
        script = f'mount --bind "$1/etc/containerd" /etc/containerd && ' \
                 f'exec "$2" --config {config} config dump'
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(self.root), self.containerd.binary],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"config dump failed: {proc.stderr}"
        return tomllib.loads(proc.stdout)


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[[Containerd], Node]:
    """``make_node(containerd)``: an empty node (only /etc/containerd and the stand-ins)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: containerd config dump runs in a private mount namespace")
    assert Path("/etc/containerd").is_dir(), "/etc/containerd is missing: run scripts/setup"

    def make(containerd: Containerd) -> Node:
        node = Node(tmp_path / f"node-{containerd.major}", containerd)
        (node.root / "etc/containerd").mkdir(parents=True)
        for stand_in in (Node.SHIM, Node.CRIU):
            node.path(stand_in).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy("/bin/true", node.path(stand_in))
        return node

    return make


@pytest.fixture
def node(make_node: Callable[[Containerd], Node], containerd: Containerd) -> Node:
    """A node with the containerd of the test's parameter (1.x, then 2.x)."""
    return make_node(containerd)


def runtimes(dump: dict[str, Any], major: int) -> dict[str, Any]:
    """The CRI runtimes of a ``config dump``."""
    key = "io.containerd.grpc.v1.cri" if major == 1 else "io.containerd.cri.v1.runtime"
    return dump["plugins"][key]["containerd"]["runtimes"]  # type: ignore[no-any-return]


def without_zeropod(dump: dict[str, Any], major: int) -> dict[str, Any]:
    """A dump with the zeropod runtime and the import list taken out, for comparisons."""
    copy = json.loads(json.dumps(dump))
    copy.pop("imports", None)
    runtimes(copy, major).pop("zeropod", None)
    return copy  # type: ignore[no-any-return]
