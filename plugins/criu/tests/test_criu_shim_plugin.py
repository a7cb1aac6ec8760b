"""The shim hooks, through the core's plugin manager."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import zeropod_criu.shim_plugin as shim_plugin
from zeropod_core.model import ContainerInfo, RoleName
from zeropod_core.plugins import LOADED, ZeropodPluginManager, make_plugin_manager
from zeropod_core.providers import Checkpointer, RuncResult, StdioPipes
from zeropod_criu.checkpointer import CriuCheckpointer
from zeropod_criu.criuconf import CRIU_CONFIG_ANNOTATION
from zeropod_criu.settings import PRE_DUMP_ANNOTATION


class _Runtime:
    """Enough of a RuntimeHandle to build a checkpointer (never used to run anything)."""

    def __init__(self, container: ContainerInfo) -> None:
        self.container, self.bundle = container, Path(container.bundle)
        self.runc_root, self.init_pid = Path("/nonexistent"), 1

    async def runc(self, *args: str, stdio: StdioPipes | None = None,
                   timeout_s: float | None = None, netns: str | None = None) -> RuncResult:
        raise AssertionError("not expected")

    def new_stdio(self) -> StdioPipes:
        raise AssertionError("not expected")


def _manager(settings: Mapping[str, str]) -> ZeropodPluginManager:
    pm = make_plugin_manager(RoleName.SHIM, autoload=False, environ={})
    pm.register(shim_plugin, name="criu")
    pm.hook.zeropod_configure.call_historic(kwargs={"settings": dict(settings)})
    return pm


def _container(cid: str = "c1", *, sandbox: bool = False) -> ContainerInfo:
    return ContainerInfo(id=cid, bundle="/nonexistent", namespace="k8s.io", sandbox=sandbox)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def pm(image_root: Path) -> ZeropodPluginManager:
    return _manager({"ZEROPOD_IMAGE_ROOT": str(image_root), "ZEROPOD_CRIU_KDAT": "false"})


def test_entry_point_loads_the_plugin() -> None:
    manager = make_plugin_manager(RoleName.SHIM, environ={"ZEROPOD_LOAD_PLUGINS": "criu"})
    (record,) = [r for r in manager.records if r.name == "criu"]
    assert record.status == LOADED, record.reason
    assert record.distribution == "zeropod-criu"
    assert {"zeropod_register_annotations", "zeropod_configure", "zeropod_modify_spec",
            "zeropod_make_checkpointer", "zeropod_container_deleted"} <= set(record.hooks)


def _python(code: str, env: Mapping[str, str] | None = None) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60, env=dict(env or os.environ)).stdout


def test_no_criu_on_path_makes_the_plugin_unavailable(tmp_path: Path) -> None:
    code = ("import json; from zeropod_core.model import RoleName; "
            "from zeropod_core.plugins import make_plugin_manager; "
            "pm = make_plugin_manager(RoleName.SHIM, environ={'ZEROPOD_LOAD_PLUGINS': 'criu'}); "
            "r = [r for r in pm.records if r.name == 'criu'][0]; "
            "print(json.dumps([r.status, r.reason]))")
    out = _python(code, {**os.environ, "PATH": str(tmp_path)})
    assert json.loads(out) == ["unavailable", "criu not found on PATH: run scripts/setup"]


def test_shim_side_import_is_lean() -> None:
    code = ("import json, sys; import zeropod_criu.shim_plugin; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pycriu', 'google', 'subprocess_tee', 'pyroute2'))))")
    assert json.loads(_python(code)) == []


def test_annotation_is_registered_with_a_parser(pm: ZeropodPluginManager) -> None:
    registered: dict[str, tuple[Any, str | None, str]] = {}

    def register(name: str, parse: Any, default: str | None, help_text: str) -> None:
        registered[name] = (parse, default, help_text)

    pm.hook.zeropod_register_annotations.call_historic(kwargs={"register": register})
    parse, default, help_text = registered[PRE_DUMP_ANNOTATION]
    assert default == "false" and parse(default) is False and parse("True") is True
    assert "memory tracking" in help_text
    with pytest.raises(ValueError):
        parse("sometimes")


def test_configure_writes_the_criu_config(pm: ZeropodPluginManager, image_root: Path) -> None:
    config = image_root / "criu.conf"
    text = config.read_text()
    assert "network-lock skip" in text and "manage-cgroups=ignore" in text
    mtime = config.stat().st_mtime_ns
    pm.hook.zeropod_configure.call_historic(
        kwargs={"settings": {"ZEROPOD_IMAGE_ROOT": str(image_root), "ZEROPOD_CRIU_KDAT": "0"}})
    assert config.stat().st_mtime_ns == mtime, "idempotent"
    assert shim_plugin.current_settings().image_root == image_root


def test_configure_survives_bad_settings(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    _manager({"ZEROPOD_CRIU_NETWORK_LOCK": "bogus", "ZEROPOD_CRIU_KDAT": "false",
              "ZEROPOD_IMAGE_ROOT": str(tmp_path / "i")})
    assert "invalid criu plugin settings" in caplog.text
    assert shim_plugin.current_settings().network_lock == "skip"


def test_configure_says_why_pre_dump_is_off(image_root: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zeropod.criu")
    _manager({"ZEROPOD_IMAGE_ROOT": str(image_root), "ZEROPOD_CRIU_KDAT": "false"})
    features = shim_plugin.current_features()
    assert features is not None
    if features.mem_track:
        pytest.skip("this kernel tracks memory changes: pre-dump is on")
    lines = [r.getMessage() for r in caplog.records if "pre-dump is disabled" in r.getMessage()]
    assert len(lines) == 1 and PRE_DUMP_ANNOTATION in lines[0]
    checkpointer = shim_plugin.zeropod_make_checkpointer(
        container=_container(), runtime=_Runtime(_container()),
        config={PRE_DUMP_ANNOTATION: True})
    assert checkpointer is not None and checkpointer.pre_dump is False


def test_modify_spec_names_the_config(pm: ZeropodPluginManager, image_root: Path) -> None:
    spec: dict[str, Any] = {"annotations": {"other": "x"}}
    pm.hook.zeropod_modify_spec(container=_container(), spec=spec, config={})
    config_file = image_root / _container().id / "criu.conf"  # one per container
    assert spec["annotations"] == {"other": "x", CRIU_CONFIG_ANNOTATION: str(config_file)}
    assert "network-lock skip" in config_file.read_text()
    sandbox_spec: dict[str, Any] = {}
    pm.hook.zeropod_modify_spec(container=_container(sandbox=True), spec=sandbox_spec,
                                config={})
    assert sandbox_spec == {}


def test_modify_spec_rewrites_a_missing_config(pm: ZeropodPluginManager,
                                               image_root: Path) -> None:
    config_file = image_root / _container().id / "criu.conf"
    pm.hook.zeropod_modify_spec(container=_container(), spec={}, config={})
    config_file.unlink()
    pm.hook.zeropod_modify_spec(container=_container(), spec={}, config={})
    assert config_file.is_file()
    assert oct(config_file.parent.stat().st_mode & 0o777) == "0o700"


def test_make_checkpointer(pm: ZeropodPluginManager, image_root: Path) -> None:
    container = _container("c7")
    checkpointer = pm.hook.zeropod_make_checkpointer(
        container=container, runtime=_Runtime(container), config={})
    assert isinstance(checkpointer, CriuCheckpointer) and isinstance(checkpointer, Checkpointer)
    assert checkpointer.paths.snapshot == image_root / "c7" / "snapshot"
    sandbox = _container("s1", sandbox=True)
    assert shim_plugin.zeropod_make_checkpointer(container=sandbox, runtime=_Runtime(sandbox),
                                                 config={}) is None
    fallback = pm.hook.zeropod_make_checkpointer(container=sandbox, runtime=_Runtime(sandbox),
                                                 config={})
    assert not isinstance(fallback, CriuCheckpointer), "the core's own answer for sandboxes"


def test_container_deleted_removes_its_images(pm: ZeropodPluginManager,
                                              image_root: Path) -> None:
    (image_root / "c9" / "snapshot").mkdir(parents=True)
    (image_root / "c9" / "snapshot" / "pages-1.img").write_bytes(b"x")
    (image_root / "c10").mkdir()
    pm.hook.zeropod_container_deleted(container=_container("c9"))
    assert not (image_root / "c9").exists() and (image_root / "c10").exists()
    assert (image_root / "criu.conf").exists()
