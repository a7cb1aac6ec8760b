"""The loader helper: re-attach replaces (never stacks), reload keeps maps, detach cleans up."""

from __future__ import annotations

import os
from pathlib import Path

from zpebpf_lab import (
    ACTIVATOR_PORT,
    APP_PORT,
    POD_V4,
    Lab,
    request,
    requires_root,
    run,
)

from zeropod_ebpf_redirect import bpfsys
from zeropod_ebpf_redirect.maps import PIN_NAMES, PROG_EGRESS, PROG_INGRESS, PodMaps

pytestmark = requires_root

HOOKS = [("lo", "ingress"), ("lo", "egress"), ("eth0", "ingress"), ("eth0", "egress")]


def _pinned_prog_id(pin_dir: Path, name: str) -> int:
    fd = bpfsys.obj_get(pin_dir / name)
    try:
        return int(bpfsys.prog_info(fd).id)
    finally:
        os.close(fd)


def _assert_one_filter_each(lab: Lab) -> None:
    ids = {"ingress": _pinned_prog_id(lab.pin_dir(), PROG_INGRESS),
           "egress": _pinned_prog_id(lab.pin_dir(), PROG_EGRESS)}
    for iface, hook in HOOKS:
        lines = lab.tc_filters(iface, hook)
        assert len(lines) == 1, f"{iface} {hook}: {lines}"
        assert "pref 1 " in lines[0] and "handle 0x1 " in lines[0], lines[0]
        assert f" id {ids[hook]} " in lines[0], (lines[0], ids)


def test_reattach_replaces_filters_and_keeps_state(lab: Lab) -> None:
    first = lab.loader()
    assert first["loaded"] is True
    assert set(first["timings_ms"]) >= {"load", "attach", "total"}
    _assert_one_filter_each(lab)
    maps = PodMaps.open(lab.pin_dir())
    lab.defer(maps.close)
    lab.server(ACTIVATOR_PORT, "ACTIVATOR")
    maps.reverse.update(ACTIVATOR_PORT, APP_PORT)
    maps.redirects.update(APP_PORT, ACTIVATOR_PORT)

    again = lab.loader()  # pins reused: same programs, attached again in place
    assert again["loaded"] is False
    assert again["prog_ids"] == first["prog_ids"]
    _assert_one_filter_each(lab)

    reloaded = lab.loader("--reload")  # new programs, same (compatible) maps
    assert reloaded["loaded"] is True
    assert reloaded["prog_ids"] != first["prog_ids"]
    _assert_one_filter_each(lab)
    # The redirect written before the reload is still in effect: the maps were reused.
    reply = request(lab.client_path, POD_V4, APP_PORT)
    assert (reply.tag, reply.peer_port) == ("ACTIVATOR", APP_PORT)
    assert sorted(p.name for p in lab.pin_dir().iterdir()) == sorted(PIN_NAMES)


def test_detach_removes_filters_qdisc_and_pins(lab: Lab) -> None:
    lab.loader()
    assert lab.pin_dir().is_dir()

    result = lab.loader("--detach")

    assert result["netns_present"] is True
    assert result["filters_removed"] == 4
    assert result["pins_removed"] == len(PIN_NAMES)
    assert not lab.pin_dir().exists()
    for iface, hook in HOOKS:
        assert lab.tc_filters(iface, hook) == []
        assert "clsact" not in run("tc", "-n", lab.pod, "qdisc", "show", "dev", iface)
    assert lab.loader("--detach")["pins_removed"] == 0  # idempotent


def test_detach_after_the_namespace_is_gone_removes_pins(lab: Lab) -> None:
    lab.loader()
    run("ip", "netns", "del", lab.pod)

    result = lab.loader("--detach")

    assert result["netns_present"] is False
    assert result["pins_removed"] == len(PIN_NAMES)
    assert not lab.pin_dir().exists()


def test_pins_of_another_namespace_are_not_reused(lab: Lab) -> None:
    """A pin directory left by a namespace that is gone must not leak its state."""
    lab.loader(netns=lab.client_path)  # same pin dir, another namespace
    with PodMaps.open(lab.pin_dir()) as maps:
        maps.redirects.update(APP_PORT, ACTIVATOR_PORT)

    result = lab.loader()

    assert result["loaded"] is True
    assert result["stale_pins_removed"] == len(PIN_NAMES)
    with PodMaps.open(lab.pin_dir()) as maps:
        assert list(maps.redirects.keys()) == []


def test_loader_reports_errors_as_json(lab: Lab, tmp_path: Path) -> None:
    missing = lab.loader(netns="/var/run/netns/zpebpf-does-not-exist", expect_ok=False)
    assert missing["ok"] is False
    assert "not" in missing["error"].lower()

    not_bpffs = lab.loader(pin_dir=tmp_path / "plain" / "pod", expect_ok=False)
    assert not_bpffs["ok"] is False
    assert "bpf filesystem" in not_bpffs["error"]

    host = lab.loader(netns="/proc/self/ns/net", expect_ok=False)
    assert host["ok"] is False
    assert "host network namespace" in host["error"]

    no_iface = lab.loader("--ifaces", "lo,nosuch0", expect_ok=False)
    assert no_iface["ok"] is False
    assert "nosuch0" in no_iface["error"]

