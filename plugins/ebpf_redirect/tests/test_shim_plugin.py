"""The shim hooks, through a real plugin manager, on a real pod namespace."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from zpebpf_lab import (
    APP_PORT,
    CLIENT_V4,
    CLIENT_V6,
    POD_V4,
    POD_V6,
    Connection,
    Lab,
    request,
    requires_root,
    run,
)

import zeropod_ebpf_redirect.shim_plugin as shim_plugin
from zeropod_core.model import ContainerInfo, RoleName
from zeropod_core.plugins import (
    LOADED,
    PluginUnavailable,
    ZeropodPluginManager,
    make_plugin_manager,
)
from zeropod_core.providers import ActivityTracker, Redirector
from zeropod_ebpf_redirect.bpffs import is_bpffs
from zeropod_ebpf_redirect.pod import PodRegistry
from zeropod_ebpf_redirect.redirector import EbpfRedirector
from zeropod_ebpf_redirect.settings import (
    ANNOTATION_IGNORE_LOCALHOST,
    ANNOTATION_IGNORE_SOURCES,
    PluginSettings,
)

SANDBOX_ID = "io.kubernetes.cri.sandbox-id"


def _manager(settings: Mapping[str, str]) -> ZeropodPluginManager:
    pm = make_plugin_manager(RoleName.SHIM, autoload=False, environ={})
    pm.register(shim_plugin, name="ebpf_redirect")
    pm.hook.zeropod_configure.call_historic(kwargs={"settings": dict(settings)})
    return pm


def _container(cid: str, netns: str, *, sandbox: bool = False,
               annotations: Mapping[str, str] | None = None) -> ContainerInfo:
    return ContainerInfo(id=cid, bundle="/nonexistent", namespace="k8s.io", sandbox=sandbox,
                         netns_path=netns, annotations=dict(annotations or {}))


def test_entry_point_loads_the_plugin() -> None:
    pm = make_plugin_manager(RoleName.SHIM, environ={"ZEROPOD_LOAD_PLUGINS": "ebpf_redirect"})
    (record,) = [r for r in pm.records if r.name == "ebpf_redirect"]
    assert record.status == LOADED, record.reason
    assert record.distribution == "zeropod-ebpf-redirect"
    assert {"zeropod_make_redirector", "zeropod_make_activity_tracker",
            "zeropod_container_deleted", "zeropod_register_annotations"} <= set(record.hooks)


def test_missing_object_makes_the_plugin_unavailable(tmp_path: Path) -> None:
    with pytest.raises(PluginUnavailable,
                       match=r"redirect.bpf.o not built; run plugins/ebpf_redirect/build.sh"):
        shim_plugin.require_object(tmp_path / "redirect.bpf.o")


def test_shim_side_imports_neither_libbpf_nor_pyroute2() -> None:
    code = ("import json, sys; import zeropod_ebpf_redirect.shim_plugin; "
            "maps = open('/proc/self/maps').read(); "
            "print(json.dumps({'pyroute2': any(m.startswith('pyroute2') for m in sys.modules), "
            "'libbpf': 'libbpf' in maps, "
            "'loader': 'zeropod_ebpf_redirect.loader' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == {"pyroute2": False, "libbpf": False, "loader": False}


def test_annotations_are_registered_with_parsers() -> None:
    registered: dict[str, tuple[object, str | None, str]] = {}

    def register(name: str, parse: object, default: str | None, help_text: str) -> None:
        registered[name] = (parse, default, help_text)

    pm = _manager({})
    pm.hook.zeropod_register_annotations.call_historic(kwargs={"register": register})
    ours = {name for name in registered if name.startswith("zeropod.ctrox.dev/tracker-")}
    assert ours == {ANNOTATION_IGNORE_LOCALHOST, ANNOTATION_IGNORE_SOURCES}
    parse_bool = registered[ANNOTATION_IGNORE_LOCALHOST][0]
    parse_addresses = registered[ANNOTATION_IGNORE_SOURCES][0]
    assert callable(parse_bool) and callable(parse_addresses)
    assert parse_bool("false") is False
    assert parse_addresses("10.0.0.1, ::ffff:10.0.0.2,fd00::1") == (
        "10.0.0.1", "::ffff:a00:2", "fd00::1")
    with pytest.raises(ValueError):
        parse_bool("maybe")
    with pytest.raises(ValueError):
        parse_addresses("10.0.0.1,kubelet")


def test_no_providers_without_a_namespace_or_for_the_sandbox() -> None:
    pm = _manager({})
    assert pm.hook.zeropod_make_redirector(container=_container("c", "")) is None
    assert pm.hook.zeropod_make_activity_tracker(container=_container("c", "")) is None
    sandbox = _container("sb", "/var/run/netns/whatever", sandbox=True)
    assert pm.hook.zeropod_make_redirector(container=sandbox) is None
    host_network = _container("h", "/proc/self/ns/net")  # a hostNetwork pod: never attach
    assert pm.hook.zeropod_make_redirector(container=host_network) is None
    assert pm.hook.zeropod_make_activity_tracker(container=host_network) is None
    pm.hook.zeropod_container_deleted(container=_container("c", ""))  # unknown: no error


@requires_root
async def test_pod_lifecycle_through_the_hooks(lab: Lab, tmp_path: Path) -> None:
    root = tmp_path / "bpfroot"  # not a bpffs yet: the plugin mounts one
    lab.defer(functools.partial(run, "umount", "-l", str(root), check=False))
    pm = _manager({"ZEROPOD_BPF_ROOT": str(root)})
    sandbox = _container("sb-1", lab.pod_path, sandbox=True, annotations={SANDBOX_ID: "sb-1"})
    app = _container("app-1", lab.pod_path, annotations={
        SANDBOX_ID: "sb-1", ANNOTATION_IGNORE_LOCALHOST: "true",
        ANNOTATION_IGNORE_SOURCES: CLIENT_V6})
    pm.hook.zeropod_container_created(container=sandbox, config={})
    pm.hook.zeropod_container_created(container=app, config={})

    redirector = pm.hook.zeropod_make_redirector(container=app)
    tracker = pm.hook.zeropod_make_activity_tracker(container=app)
    assert isinstance(redirector, Redirector) and isinstance(tracker, ActivityTracker)

    await tracker.track([APP_PORT])
    pin_dir = root / "sb-sb-1"
    assert is_bpffs(root) and pin_dir.is_dir()
    assert tracker.last_activity() is None

    activator = redirector.activator_port(APP_PORT)
    assert 32000 <= activator < 32768
    assert redirector.activator_port(APP_PORT) == activator
    lab.server(activator, "ACTIVATOR")
    await redirector.redirect([APP_PORT])

    proxied = Connection(lab.client_path, POD_V4, APP_PORT)
    lab.defer(proxied.close)
    reply = proxied.ask(b"wake up")
    assert (reply.tag, reply.server_port, reply.peer_port) == ("ACTIVATOR", activator, APP_PORT)
    await asyncio.sleep(0.3)  # let a delayed ACK of the reply pass: it counts as activity too
    last = tracker.last_activity()
    assert last is not None and 0 <= time.monotonic() - last < 1.0

    request(lab.client_path, POD_V6, APP_PORT)  # from an ignored source (annotation)
    request(lab.pod_path, "127.0.0.1", APP_PORT)  # loopback, ignored (annotation)
    assert tracker.last_activity() == last

    lab.server(APP_PORT, "APP")
    await redirector.release([APP_PORT])
    assert request(lab.client_path, POD_V4, APP_PORT).tag == "APP"
    assert proxied.ask(b"still proxied").tag == "ACTIVATOR"
    assert isinstance(redirector, EbpfRedirector)
    # conns holds every connection that started on the activator (closed ones until the
    # LRU evicts them or drained() forgets them), among them the open one.
    kept = redirector.proxied_connections()
    assert {c.app_port for c in kept} == {APP_PORT}
    assert (CLIENT_V4, proxied.sock.getsockname()[1]) in {
        (c.client, c.client_port) for c in kept}

    proxied.close()
    await redirector.drained([APP_PORT])
    maps = redirector.pod.maps
    assert maps is not None
    assert redirector.proxied_connections() == []
    assert maps.reverse.lookup(activator) is None

    await redirector.close()
    await tracker.close()
    pm.hook.zeropod_container_deleted(container=app)
    assert pin_dir.is_dir(), "the sandbox still lives: pins stay"
    pm.hook.zeropod_container_deleted(container=sandbox)
    assert not pin_dir.exists()
    for iface in ("lo", "eth0"):
        for hook in ("ingress", "egress"):
            assert lab.tc_filters(iface, hook) == []
    assert request(lab.client_path, POD_V4, APP_PORT).tag == "APP"


@requires_root
async def test_restarted_shim_reuses_the_pins(lab: Lab) -> None:
    settings = PluginSettings(bpf_root=lab.bpffs)
    container = _container("c1", lab.pod_path)
    first = PodRegistry().pod_for(container, settings)
    before = EbpfRedirector(first, container)
    port = before.activator_port(APP_PORT)
    await before.redirect([APP_PORT])
    assert first.last_loader_result is not None
    assert first.maps is not None
    lab.defer(first.maps.close)  # the "old shim" still holds its fds

    registry = PodRegistry()  # the new shim process
    second = registry.pod_for(container, settings)
    maps = await second.ensure_loaded()
    assert second.last_loader_result is None, "pins of this namespace are opened, not reloaded"
    assert maps.redirects.lookup(APP_PORT) == port
    assert EbpfRedirector(second, container).activator_port(APP_PORT) == port

    assert registry.container_deleted(container, settings), "last container, no sandbox"
    assert not second.pin_dir.exists()
