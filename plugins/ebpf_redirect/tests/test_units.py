"""Pure-Python parts: activator port pool, settings, address and key codecs (no root)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from zeropod_ebpf_redirect.maps import ADDR, CONN_KEY, ConnKey, pack_addr, unpack_addr
from zeropod_ebpf_redirect.ports import ActivatorPorts, PoolExhausted, PortRange
from zeropod_ebpf_redirect.settings import PluginSettings, TrackerFilter


def test_activator_ports_are_stable_collision_free_and_below_ephemeral() -> None:
    pool = ActivatorPorts()
    ports = {app: pool.port_for(app) for app in (80, 8080, 8848, 9090, 32000, 32768 + 80)}
    assert len(set(ports.values())) == len(ports), ports
    assert all(32000 <= p < 32768 for p in ports.values())
    assert pool.port_for(8080) == ports[8080]
    assert ActivatorPorts().port_for(8080) == ports[8080], "same slot in a restarted shim"
    known = ActivatorPorts()
    known.port_for(32000)  # an app listening inside the pool
    assert known.port_for(7680) == 32001, "7680 prefers 32000, which is an app port"


def test_activator_ports_adopt_release_and_exhaust() -> None:
    pool = ActivatorPorts(PortRange(20000, 20002))
    pool.adopt(20001, 8080)
    assert pool.port_for(8080) == 20001
    others = {pool.port_for(1), pool.port_for(2)}
    assert others == {20000, 20002}
    with pytest.raises(PoolExhausted):
        pool.port_for(3)
    pool.release(1)
    assert pool.port_for(3) in {20000, 20002}


def test_port_range_parsing() -> None:
    assert PortRange.parse("31000-31999") == PortRange(31000, 31999)
    assert PortRange.parse("31000").size == 1
    assert PortRange(40000, 40010).overlaps_ephemeral()
    assert not PortRange(32000, 32767).overlaps_ephemeral()
    for bad in ("", "a-b", "0-10", "100-50", "1-70000"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)


def test_settings_from_mapping_and_annotations() -> None:
    default = PluginSettings.from_mapping({})
    assert default == PluginSettings()
    assert default.bpf_root == Path("/run/zeropod/bpf")
    assert default.tracker == TrackerFilter(ignore_localhost=True, ignore_sources=())
    custom = PluginSettings.from_mapping({
        "ZEROPOD_BPF_ROOT": "/tmp/x", "ZEROPOD_BPF_IFACES": "lo, eth1",
        "ZEROPOD_ACTIVATOR_PORTS": "31000-31099", "ZEROPOD_TRACKER_IGNORE_LOCALHOST": "no",
        "ZEROPOD_TRACKER_IGNORE_SOURCES": "10.0.0.1,fd00::1"})
    assert custom.bpf_root == Path("/tmp/x")
    assert custom.ifaces == ("lo", "eth1")
    assert custom.activator_ports == PortRange(31000, 31099)
    assert custom.tracker == TrackerFilter(False, ("10.0.0.1", "fd00::1"))
    assert custom.tracker_for({"zeropod.ctrox.dev/tracker-ignore-localhost": "true"}) == (
        TrackerFilter(True, ("10.0.0.1", "fd00::1")))
    with pytest.raises(ValueError):
        PluginSettings.from_mapping({"ZEROPOD_ACTIVATOR_PORTS": "lots"})


def test_address_and_connection_key_codecs() -> None:
    assert pack_addr("10.1.2.3") == bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert pack_addr("::1") == bytes(15) + b"\x01"
    for address in ("10.1.2.3", "::1", "fd00:eb::2", "127.0.0.1"):
        assert unpack_addr(pack_addr(address)) == address
        assert ADDR.unpack(ADDR.pack(address)) == address
    key = ConnKey("10.251.0.1", 40000, 8080)
    raw = CONN_KEY.pack(key)
    assert len(raw) == CONN_KEY.size == 20  # struct conn_key in redirect.c
    assert raw[16:] == (40000).to_bytes(2, sys.byteorder) + (8080).to_bytes(2, sys.byteorder)
    assert CONN_KEY.unpack(raw) == key
