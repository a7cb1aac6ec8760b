"""The installer against real containerd configs, read back by the real containerd.

Each case: write a node's config, run ``zeropod-installer``, check with ``containerd config
dump`` that containerd sees the zeropod runtime as intended and every other setting unchanged,
run it again (nothing changes), uninstall (the original bytes come back), uninstall again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Containerd, Node, runtimes, without_zeropod


def _zeropod(node: Node, dump: dict[str, Any]) -> dict[str, Any]:
    found = runtimes(dump, node.containerd.major).get("zeropod")
    assert found is not None, \
        f"containerd does not see zeropod: {sorted(runtimes(dump, node.containerd.major))}"
    return found  # type: ignore[no-any-return]


def _check_round_trip(node: Node, *, systemd: bool) -> dict[str, Any]:
    """Install, verify with the real containerd, re-run, uninstall; returns the install summary."""
    before_files = node.snapshot()
    before = node.dump()
    summary = node.install()
    assert summary["systemd_cgroup"] is systemd
    assert summary["changed_files"], summary
    after = node.dump()
    zeropod = _zeropod(node, after)
    assert zeropod["runtime_type"] == "io.containerd.runc.v2"
    assert zeropod["runtime_path"] == "/opt/zeropod/bin/containerd-shim-zeropod-v2"
    assert zeropod["pod_annotations"] == ["zeropod.ctrox.dev/*", "io.containerd.runc.v2.group"]
    assert zeropod["options"]["SystemdCgroup"] is systemd
    assert zeropod["options"]["CriuPath"] == "/opt/zeropod/bin/criu"
    # nothing else containerd sees changed
    assert without_zeropod(after, node.containerd.major) == \
        without_zeropod(before, node.containerd.major)
    assert os.readlink(node.path("/opt/zeropod/bin/containerd-shim-zeropod-v2")) == Node.SHIM
    assert os.readlink(node.path("/opt/zeropod/bin/criu")) == Node.CRIU

    installed_files = node.snapshot()
    again = node.install()
    assert again["changed_files"] == [] and again["changed_links"] == []
    assert again["restart"] == "not needed"
    assert node.snapshot() == installed_files

    removed = node.uninstall()
    assert sorted(removed["changed_files"]) == sorted(summary["changed_files"])
    assert removed["restart"] == "needed"
    assert node.snapshot() == before_files
    assert node.uninstall()["changed_files"] == []
    assert node.snapshot() == before_files
    return summary


@pytest.mark.parametrize("systemd", [False, True])
def test_default_config(node: Node, systemd: bool) -> None:
    """``containerd config default`` of the version, runc with either cgroup driver."""
    text = node.containerd.default_config()
    assert "SystemdCgroup = false" in text
    if systemd:
        text = text.replace("SystemdCgroup = false", "SystemdCgroup = true")
    node.write("/etc/containerd/config.toml", text)
    summary = _check_round_trip(node, systemd=systemd)
    if node.containerd.major == 1:
        assert summary["changed_files"] == ["/etc/containerd/config.toml"]
    else:  # the drop-in plus one imports line in the main file
        assert summary["changed_files"] == ["/etc/containerd/zeropod.toml",  # first: the
                                            "/etc/containerd/config.toml"]  # import comes last


def test_no_config_file(node: Node) -> None:
    """No config.toml at all (containerd's defaults): the installer writes one, and uninstall
    removes it again."""
    _check_round_trip(node, systemd=False)
    assert not node.path("/etc/containerd/config.toml").exists()


def test_version_1_config(node: Node) -> None:
    """A config without a version header (version 1: plugins named by id) and a systemd runc."""
    node.write("/etc/containerd/config.toml",
               "# an old config\n"
               "[plugins.cri]\n"
               "  sandbox_image = \"registry.example/pause:3.2\"\n"
               "[plugins.cri.containerd]\n"
               "  snapshotter = \"native\"\n"
               "[plugins.cri.containerd.runtimes.runc]\n"
               "  runtime_type = \"io.containerd.runc.v2\"\n"
               "[plugins.cri.containerd.runtimes.runc.options]\n"
               "  SystemdCgroup = true\n")
    if node.containerd.major == 1:
        summary = _check_round_trip(node, systemd=True)
        assert summary["config_version"] == 1
    else:  # containerd 2 ignores a version 1 file's CRI section (it says so in its log)
        summary = _check_round_trip(node, systemd=False)
        assert summary["config_version"] == 3


def test_other_runtimes_and_default_runtime(node: Node) -> None:
    """Other runtimes stay; the cgroup driver follows the default runtime when it is runc.v2."""
    if node.containerd.major == 1:
        key, version = '"io.containerd.grpc.v1.cri"', 2
    else:
        key, version = '"io.containerd.cri.v1.runtime"', 3
    node.write("/etc/containerd/config.toml",
               f"version = {version}\n"
               f"[plugins.{key}.containerd]\n"
               f"  default_runtime_name = \"crun\"\n"
               f"[plugins.{key}.containerd.runtimes.crun]\n"
               f"  runtime_type = \"io.containerd.runc.v2\"\n"
               f"  [plugins.{key}.containerd.runtimes.crun.options]\n"
               f"    BinaryName = \"/usr/bin/crun\"\n"
               f"    SystemdCgroup = true\n"
               f"[plugins.{key}.containerd.runtimes.kata]\n"
               f"  runtime_type = \"io.containerd.kata.v2\"\n")
    _check_round_trip(node, systemd=True)


def test_v1x_cri_section_in_an_import(make_node: Callable[[Containerd], Node],
                                      containerd1: Containerd) -> None:
    """containerd 1.x: an import's section replaces the main file's, so the runtime must go
    into the imported file that holds the CRI section, and the main file stays as it is."""
    node = make_node(containerd1)
    node.write("/etc/containerd/config.toml",
               "version = 2\nimports = [\"/etc/containerd/cri.toml\"]\n"
               "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"ignored\"\n")
    node.write("/etc/containerd/cri.toml",
               "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n"
               "  sandbox_image = \"registry.example/pause:3.9\"\n"
               "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n"
               "  runtime_type = \"io.containerd.runc.v2\"\n"
               "  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n"
               "    SystemdCgroup = true\n")
    summary = _check_round_trip(node, systemd=True)
    assert summary["changed_files"] == ["/etc/containerd/cri.toml"]


def test_v2x_existing_glob_import(make_node: Callable[[Containerd], Node],
                                  containerd2: Containerd) -> None:
    """containerd 2.x with ``imports = ["/etc/containerd/conf.d/*.toml"]``: the drop-in goes
    into that folder and the main file is not touched."""
    node = make_node(containerd2)
    text = node.containerd.default_config().replace(
        "imports = []", "imports = ['/etc/containerd/conf.d/*.toml']")
    assert "conf.d" in text
    node.write("/etc/containerd/config.toml", text)
    node.write("/etc/containerd/conf.d/10-runc.toml",
               "version = 3\n"
               "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n"
               "  SystemdCgroup = true\n")
    summary = _check_round_trip(node, systemd=True)
    assert summary["changed_files"] == ["/etc/containerd/conf.d/zeropod.toml"]


def test_v2x_multiline_imports(make_node: Callable[[Containerd], Node],
                               containerd2: Containerd) -> None:
    """An ``imports`` array over several lines with comments is extended reversibly."""
    node = make_node(containerd2)
    node.write("/etc/containerd/config.toml",
               "version = 3\n"
               "imports = [\n"
               "  \"/etc/containerd/extra.toml\",  # site settings [see wiki]\n"
               "]\n"
               "[plugins.'io.containerd.cri.v1.images']\n"
               "  snapshotter = 'native'\n")
    node.write("/etc/containerd/extra.toml",
               "version = 3\n"
               "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.gvisor]\n"
               "  runtime_type = 'io.containerd.runsc.v1'\n")
    _check_round_trip(node, systemd=False)
    node.install()
    dump = node.dump()
    assert {"runc", "gvisor", "zeropod"} <= set(runtimes(dump, 2))
    assert dump["plugins"]["io.containerd.cri.v1.images"]["snapshotter"] == "native"


def test_v2x_version_2_main_file(make_node: Callable[[Containerd], Node],
                                 containerd1: Containerd, containerd2: Containerd) -> None:
    """containerd 2.x reading a version 2 file (e.g. kept from 1.x): the drop-in must be
    version 2 too, or containerd stops migrating the main file's CRI settings (runc's
    SystemdCgroup = true would silently become false)."""
    node = make_node(containerd2)
    node.write("/etc/containerd/config.toml", containerd1.default_config().replace(
        "SystemdCgroup = false", "SystemdCgroup = true"))
    summary = _check_round_trip(node, systemd=True)
    assert summary["config_version"] == 2
    node.install()
    assert "version = 2\n" in node.path("/etc/containerd/zeropod.toml").read_text()
    assert runtimes(node.dump(), 2)["runc"]["options"]["SystemdCgroup"] is True


def test_cgroup_driver_changes_are_followed(node: Node) -> None:
    """Switching runc to systemd after installing: the next run updates the runtime."""
    node.write("/etc/containerd/config.toml", node.containerd.default_config())
    assert node.install()["systemd_cgroup"] is False
    config = node.path("/etc/containerd/config.toml")
    config.write_text(config.read_text().replace("SystemdCgroup = false",
                                                 "SystemdCgroup = true", 1))
    summary = node.install()
    assert summary["systemd_cgroup"] is True and summary["changed_files"]
    assert _zeropod(node, node.dump())["options"]["SystemdCgroup"] is True
    assert node.install("--cgroup-driver", "cgroupfs")["systemd_cgroup"] is False
    assert _zeropod(node, node.dump())["options"]["SystemdCgroup"] is False


def test_user_edits_survive_uninstall(node: Node) -> None:
    """Edits made after installing stay when uninstalling; only the installer's text goes."""
    node.write("/etc/containerd/config.toml", node.containerd.default_config())
    node.install()
    config = node.path("/etc/containerd/config.toml")
    config.write_text(config.read_text().replace("max_concurrent_downloads = 3",
                                                 "max_concurrent_downloads = 7"))
    node.uninstall()
    text = config.read_text()
    assert "max_concurrent_downloads = 7" in text
    assert "zeropod" not in text
    assert text == node.containerd.default_config().replace("max_concurrent_downloads = 3",
                                                            "max_concurrent_downloads = 7")


def test_existing_zeropod_runtime_is_an_error(node: Node) -> None:
    """A zeropod runtime the installer did not write: refuse, name the file, change nothing."""
    key = '"io.containerd.grpc.v1.cri"' if node.containerd.major == 1 else \
        '"io.containerd.cri.v1.runtime"'
    node.write("/etc/containerd/config.toml",
               f"version = {node.containerd.major + 1}\n"
               f"[plugins.{key}.containerd.runtimes.zeropod]\n"
               f"  runtime_type = \"io.containerd.zeropod.v2\"\n")
    before = node.snapshot()
    proc = node.run(check=False)
    assert proc.returncode == 1
    assert "/etc/containerd/config.toml already defines a containerd runtime 'zeropod'" \
        in proc.stderr
    assert node.snapshot() == before


def test_invalid_toml_is_an_error(node: Node) -> None:
    node.write("/etc/containerd/config.toml", "version = 2\n[plugins\n")
    proc = node.run(check=False)
    assert proc.returncode == 1
    assert "/etc/containerd/config.toml is not valid TOML" in proc.stderr


def test_missing_import_is_an_error(node: Node) -> None:
    node.write("/etc/containerd/config.toml",
               "version = 2\nimports = [\"/etc/containerd/x.toml\"]\n")
    proc = node.run(check=False)
    assert proc.returncode == 1
    assert "imports /etc/containerd/x.toml, which does not exist" in proc.stderr


def test_dry_run_changes_nothing(node: Node) -> None:
    node.write("/etc/containerd/config.toml", node.containerd.default_config())
    before = node.snapshot()
    proc = node.run("--dry-run")
    assert node.snapshot() == before
    assert "+# >>> zeropod-installer" in proc.stderr or "+imports = [" in proc.stderr
    assert '"restart": "would be needed"' in proc.stdout
