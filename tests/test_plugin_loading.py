"""Plugin discovery through real entry points: isolation, allowlist, blocklist, listing.

Each test writes small distributions (a ``.dist-info`` with ``entry_points.txt`` and a module)
into a temporary folder and runs ``zeropod plugins`` in a subprocess with that folder on
``PYTHONPATH``: the same discovery path as installed plugins, without touching the venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.model import RoleName
from zeropod_core.plugins import make_plugin_manager

GOOD = """
from zeropod_core import hookimpl

@hookimpl
def zeropod_container_deleted(container):
    pass
"""
BROKEN = "raise ImportError('libnothing.so.1: cannot open shared object file')\n"
NEEDS_CRIU = """
from zeropod_core.plugins import PluginUnavailable
raise PluginUnavailable("criu 4.2 not found on PATH")
"""
WRONG_HOOK = """
from zeropod_core import hookimpl

@hookimpl
def zeropod_handle_status(status):  # a manager hook offered to the shim
    pass
"""


def _write_dist(
    site: Path, dist: str, module: str, source: str, group: str = "zeropod.shim"
) -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{module.removeprefix('zp_')} = {module}\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    _write_dist(tmp_path, "zeropod-good", "zp_good", GOOD)
    _write_dist(tmp_path, "zeropod-broken", "zp_broken", BROKEN)
    _write_dist(tmp_path, "zeropod-needs-criu", "zp_needs_criu", NEEDS_CRIU)
    _write_dist(tmp_path, "zeropod-wrong-hook", "zp_wrong_hook", WRONG_HOOK)
    return tmp_path


def _plugins(site: Path, **env: str) -> dict[str, dict[str, Any]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPOD_")}
    environ["PYTHONPATH"] = str(site)
    environ.update(env)
    proc = subprocess.run([sys.executable, "-m", "zeropod_core.cli", "plugins", "--role", "shim"],
                          capture_output=True, text=True, env=environ, check=True)
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    return {name: row for name, row in rows.items() if name in {
        "probes", "good", "broken", "needs_criu", "wrong_hook"}}


def test_a_plugin_that_fails_to_import_is_unavailable_and_others_load(site: Path) -> None:
    rows = _plugins(site)
    assert rows["good"]["status"] == "loaded"
    assert rows["good"]["distribution"] == "zeropod-good"
    assert rows["good"]["version"] == "1.2.3"
    assert rows["good"]["hooks"] == ["zeropod_container_deleted"]
    assert rows["broken"]["status"] == (
        "unavailable: ImportError: libnothing.so.1: cannot open shared object file")
    assert rows["needs_criu"]["status"] == "unavailable: criu 4.2 not found on PATH"
    assert rows["wrong_hook"]["status"].startswith("unavailable: implements hooks unknown")
    assert rows["probes"]["status"] == "loaded"


def test_allowlist_loads_only_named_plugins(site: Path) -> None:
    rows = _plugins(site, ZEROPOD_LOAD_PLUGINS="zeropod-good")  # a distribution name
    assert rows["good"]["status"] == "loaded"
    for name in ("broken", "needs_criu", "wrong_hook"):
        assert rows[name]["status"] == "blocked"
        assert rows[name]["reason"] == "not in ZEROPOD_LOAD_PLUGINS"


def test_empty_allowlist_loads_no_plugin_but_the_builtins(site: Path) -> None:
    rows = _plugins(site, ZEROPOD_LOAD_PLUGINS="")
    assert {name: row["status"] for name, row in rows.items()} == {
        "probes": "loaded", "good": "blocked", "broken": "blocked", "needs_criu": "blocked",
        "wrong_hook": "blocked"}


def test_blocklist_blocks_by_plugin_name(site: Path) -> None:
    rows = _plugins(site, ZEROPOD_DISABLE_PLUGINS="good, broken")
    assert rows["good"]["status"] == "blocked"
    assert rows["good"]["reason"] == "ZEROPOD_DISABLE_PLUGINS"
    assert rows["broken"]["status"] == "blocked"
    assert rows["needs_criu"]["status"].startswith("unavailable")


def test_blocklist_wins_over_allowlist(site: Path) -> None:
    rows = _plugins(site, ZEROPOD_LOAD_PLUGINS="good", ZEROPOD_DISABLE_PLUGINS="zeropod-good")
    assert rows["good"]["status"] == "blocked"


def test_manager_role_reads_its_own_group(site: Path) -> None:
    (site / "zp_mgr.py").write_text(
        "from zeropod_core import hookimpl\n@hookimpl\ndef zeropod_handle_status(status): pass\n")
    info = site / "zeropod_mgr-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zeropod-mgr\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zeropod.manager]\nmgr = zp_mgr\n")
    environ = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "zeropod_core.cli", "plugins", "--role",
                           "manager"], capture_output=True, text=True, env=environ, check=True)
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["mgr"]["status"] == "loaded" and rows["mgr"]["role"] == "manager"
    assert "good" not in rows  # a shim plugin is not offered to the manager


def test_builtin_probe_classifier_through_the_hook() -> None:
    from zeropod_core.model import ContainerInfo

    pm = make_plugin_manager(RoleName.SHIM, autoload=False)
    container = ContainerInfo(id="c", bundle="/b", namespace="ns")
    classify = pm.hook.zeropod_classify_connection
    assert classify(container=container, peek=b"") == "probe"
    assert classify(container=container, peek=(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.30\r\n\r\n")) == "probe"
    assert classify(container=container, peek=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == "wake"
    assert classify(container=container, peek=b"\x16\x03\x01 tls hello") == "wake"


def test_the_shim_side_of_installed_plugins_imports_no_heavy_client() -> None:
    """The Kubernetes and Prometheus clients are manager dependencies only: loading every
    installed shim plugin (as each pod's shim does) must import neither."""
    code = ("import sys\n"
            "from zeropod_core.model import RoleName\n"
            "from zeropod_core.plugins import make_plugin_manager\n"
            "pm = make_plugin_manager(RoleName.SHIM)\n"
            "print(sorted(r.name for r in pm.records if r.status == 'loaded'))\n"
            "print(sorted(m for m in ('kubernetes', 'prometheus_client') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if not k.startswith("ZEROPOD_")}).stdout.splitlines()
    assert "resize" in out[0]  # the resize plugin's shim side is among them
    assert out[1] == "[]"


def test_a_probe_whose_head_does_not_fit_the_buffer_wakes() -> None:
    from zeropod_core.builtin.probes import is_kube_probe

    head = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.20\r\nX-Pad: " + b"p" * 200
    assert is_kube_probe(head + b"\r\n\r\n")
    assert not is_kube_probe(head[:64])  # peeked only probe-buffer-size bytes: a wake
