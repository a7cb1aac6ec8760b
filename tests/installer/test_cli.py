"""``zeropod-installer`` as a user runs it: links, errors that name the thing, restarts."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable
from pathlib import Path

from zeropod_core.hooks import ShimHooks
from zeropod_core.installer import host
from zeropod_core.installer.containerd_config import POD_ANNOTATIONS
from zeropod_core.model import RoleName
from zeropod_core.plugins import make_plugin_manager

from .conftest import Containerd, Node


def _go_match(name: str, pattern: str) -> bool:
    """containerd matches pod_annotations with Go's filepath.Match: ``*`` stops at ``/``."""
    names, patterns = name.split("/"), pattern.split("/")
    return len(names) == len(patterns) and all(
        fnmatch.fnmatchcase(n, p) for n, p in zip(names, patterns, strict=True))


def test_pod_annotations_cover_every_registered_annotation() -> None:
    """Every annotation the core and the installed plugins register reaches the shim."""
    registry = ShimHooks(make_plugin_manager(RoleName.SHIM)).annotations()
    names = set(registry.annotations)
    assert "zeropod.ctrox.dev/scaledown-duration" in names
    assert "zeropod.ctrox.dev/pre-dump" in names  # registered by the criu plugin
    missed = sorted(n for n in names if not any(_go_match(n, p) for p in POD_ANNOTATIONS))
    assert missed == []


def test_links_and_containerd_opt_folder(make_node: Callable[[Containerd], Node],
                                         containerd1: Containerd) -> None:
    """containerd's own opt folder (on the shims' PATH) gets a criu link; a criu that is not
    the installer's stays there untouched, also when uninstalling."""
    node = make_node(containerd1)
    node.write("/etc/containerd/config.toml",
               'version = 2\n[plugins."io.containerd.internal.v1.opt"]\n'
               '  path = "/var/lib/containerd/opt"\n')
    summary = node.install()
    assert summary["changed_links"] == ["/opt/zeropod/bin/containerd-shim-zeropod-v2",
                                        "/opt/zeropod/bin/criu",
                                        "/var/lib/containerd/opt/bin/criu"]
    assert os.readlink(node.path("/var/lib/containerd/opt/bin/criu")) == "/opt/zeropod/bin/criu"
    node.uninstall()
    assert not node.path("/var/lib/containerd/opt/bin/criu").exists()
    assert not node.path("/opt/zeropod").exists()

    node.write("/var/lib/containerd/opt/bin/criu", "someone else's criu")
    summary = node.install()
    assert "/var/lib/containerd/opt/bin/criu" not in summary["changed_links"]
    assert node.path("/var/lib/containerd/opt/bin/criu").read_text() == "someone else's criu"
    node.uninstall()
    assert node.path("/var/lib/containerd/opt/bin/criu").read_text() == "someone else's criu"


def test_bad_input_names_the_thing(make_node: Callable[[Containerd], Node],
                                   containerd2: Containerd) -> None:
    node = make_node(containerd2)
    proc = node.run("--shim", "/usr/lib/zeropod/missing", check=False)
    assert proc.returncode == 1
    assert "--shim /usr/lib/zeropod/missing: not an executable file on the node" in proc.stderr
    proc = node.run("--containerd-version", "1.5.9", check=False, version=False)
    assert proc.returncode == 1 and "containerd 1.5.9 is not supported" in proc.stderr
    proc = node.run("--containerd-version", "latest", check=False, version=False)
    assert proc.returncode == 1 and "not a containerd version: 'latest'" in proc.stderr
    proc = node.run("--config", "etc/containerd/config.toml", check=False)
    assert proc.returncode == 1 and "must be absolute" in proc.stderr
    assert not node.path("/opt/zeropod").exists()


def test_containerd_version_is_asked(make_node: Callable[[Containerd], Node],
                                     containerd1: Containerd, containerd2: Containerd) -> None:
    """Without --containerd-version the installer runs the node's ``containerd --version``
    (through chroot when the node is mounted elsewhere)."""
    assert host.containerd_version(Path("/"), containerd1.binary).major == 1
    version = host.containerd_version(Path("/"), containerd2.binary)
    assert (version.major, version.minor) == (2, 1)
    node = make_node(containerd2)  # a node folder without a containerd binary
    proc = node.run(check=False, version=False)
    assert proc.returncode == 1
    assert f"cannot run containerd --version (chrooted into {node.root})" in proc.stderr
    assert "pass --containerd-version" in proc.stderr


def test_restart_hint_without_systemd(make_node: Callable[[Containerd], Node],
                                      containerd1: Containerd) -> None:
    """No systemd on the node: the installer says what to do; --restart never does the same."""
    node = make_node(containerd1)
    proc = node.run()
    assert '"restart": "needed"' in proc.stdout
    assert "restart containerd for it to take effect" in proc.stdout
    node.uninstall()
    proc = node.run("--restart", "never")
    assert '"restart": "needed"' in proc.stdout


def test_payload_is_copied_to_the_same_path(make_node: Callable[[Containerd], Node],
                                            containerd2: Containerd, tmp_path: Path) -> None:
    """--payload (the DaemonSet's node image): the folder lands at the same path on the node,
    incrementally, and uninstalling removes exactly it."""
    node = make_node(containerd2)
    source = tmp_path / "image" / "opt" / "zeropod" / "node"
    (source / "bin").mkdir(parents=True)
    (source / "criu").mkdir()
    for program in ("bin/containerd-shim-zeropod-v2", "criu/criu"):
        (source / program).write_bytes(b"#!/bin/sh\n")
        (source / program).chmod(0o755)
    (source / "bin" / "python3").symlink_to("python3.11")
    (source / "stale").write_text("old")
    args = ("--payload", str(source), "--shim", f"{source}/bin/containerd-shim-zeropod-v2",
            "--criu", f"{source}/criu/criu")
    copy = node.path(str(source))
    summary = node.install(*args)
    assert summary["payload_copied"] is True
    assert os.readlink(copy / "bin" / "python3") == "python3.11"
    assert os.access(copy / "criu" / "criu", os.X_OK)
    assert os.readlink(node.path("/opt/zeropod/bin/criu")) == f"{source}/criu/criu"
    assert node.install(*args)["payload_copied"] is False

    (source / "stale").unlink()
    (source / "bin" / "containerd-shim-zeropod-v2").write_bytes(b"#!/bin/sh\nexit 0\n")
    assert node.install(*args)["payload_copied"] is True
    assert not (copy / "stale").exists()
    assert (copy / "bin" / "containerd-shim-zeropod-v2").read_bytes().endswith(b"exit 0\n")

    removed = json.loads(node.run("--uninstall", *args).stdout)
    assert removed["payload_removed"] is True and not copy.exists()

    copy.mkdir(parents=True)
    (copy / "mine").write_text("not the installer's")
    proc = node.run(*args, check=False)
    assert proc.returncode == 1
    assert f"{source} exists on the node and was not copied by zeropod-installer" in proc.stderr
