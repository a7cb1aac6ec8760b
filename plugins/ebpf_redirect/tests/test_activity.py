"""Activity timestamps: set by real packets on registered ports only, with ignored peers."""

from __future__ import annotations

import asyncio
import time

import pytest
from zpebpf_lab import (
    ACTIVATOR_PORT,
    APP_PORT,
    CLIENT_V4,
    CLIENT_V6,
    POD_V4,
    POD_V6,
    Lab,
    request,
    requires_root,
)

from zeropod_core.model import ContainerInfo
from zeropod_ebpf_redirect.maps import FLAG_IGNORE_LOCALHOST, SETTING_FLAGS, PodMaps
from zeropod_ebpf_redirect.pod import Pod
from zeropod_ebpf_redirect.settings import PluginSettings, TrackerFilter
from zeropod_ebpf_redirect.tracker import EbpfActivityTracker

pytestmark = requires_root


def _stamp(maps: PodMaps, port: int = APP_PORT) -> int:
    """The port's timestamp once the last connection's closing packets have gone through."""
    time.sleep(0.1)
    value = maps.activity.lookup(port)
    assert value is not None, f"port {port} is not registered"
    return value


def _request_stamps(lab: Lab, maps: PodMaps, netns: str, host: str) -> tuple[int, int, int]:
    """(stamp before, stamp after, monotonic ns before the request)."""
    before = _stamp(maps)
    started = time.monotonic_ns()
    assert request(netns, host, APP_PORT).tag == "APP"
    return before, _stamp(maps), started


def test_activity_updates_on_traffic_and_not_without(lab: Lab) -> None:
    maps = lab.load()
    lab.server(APP_PORT, "APP")
    lab.server(8081, "OTHER")
    assert maps.activity.insert(APP_PORT, 0)

    time.sleep(0.2)
    assert _stamp(maps) == 0, "no traffic yet, no activity"

    started = time.monotonic_ns()
    assert request(lab.client_path, POD_V4, APP_PORT).tag == "APP"
    stamp = _stamp(maps)
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC: directly comparable with time.monotonic_ns().
    assert started <= stamp <= time.monotonic_ns()

    time.sleep(0.3)
    assert _stamp(maps) == stamp, "idle: the timestamp must not move"

    # Unregistered ports are never added by the program (it only updates with BPF_EXIST).
    assert request(lab.client_path, POD_V6, 8081).tag == "OTHER"
    assert maps.activity.lookup(8081) is None
    assert _stamp(maps) == stamp


def test_activity_counts_redirected_connections(lab: Lab) -> None:
    maps = lab.load()
    lab.server(ACTIVATOR_PORT, "ACTIVATOR")
    maps.activity.insert(APP_PORT, 0)
    maps.reverse.update(ACTIVATOR_PORT, APP_PORT)
    maps.redirects.update(APP_PORT, ACTIVATOR_PORT)

    started = time.monotonic_ns()
    assert request(lab.client_path, POD_V4, APP_PORT).tag == "ACTIVATOR"
    assert _stamp(maps) >= started
    assert maps.activity.lookup(ACTIVATOR_PORT) is None


def test_ignore_localhost_when_configured(lab: Lab) -> None:
    maps = lab.load()
    lab.server(APP_PORT, "APP")
    maps.activity.insert(APP_PORT, 0)

    maps.settings.update(SETTING_FLAGS, FLAG_IGNORE_LOCALHOST)
    for host in ("127.0.0.1", "::1"):
        before, after, _ = _request_stamps(lab, maps, lab.pod_path, host)
        assert after == before, f"{host} must be ignored"
    # The pod's own address is not loopback: it counts.
    before, after, started = _request_stamps(lab, maps, lab.pod_path, POD_V4)
    assert after >= started
    before, after, started = _request_stamps(lab, maps, lab.client_path, POD_V6)
    assert after >= started

    maps.settings.update(SETTING_FLAGS, 0)
    for host in ("127.0.0.1", "::1"):
        before, after, started = _request_stamps(lab, maps, lab.pod_path, host)
        assert after >= started, f"{host} must count when not ignored"


def test_ignored_sources_do_not_count(lab: Lab) -> None:
    maps = lab.load()
    lab.server(APP_PORT, "APP")
    maps.activity.insert(APP_PORT, 0)
    maps.ignore_src.update(CLIENT_V4, 1)  # e.g. the node address kubelet probes come from

    before, after, _ = _request_stamps(lab, maps, lab.client_path, POD_V4)
    assert after == before
    before, after, started = _request_stamps(lab, maps, lab.client_path, POD_V6)
    assert after >= started, f"{CLIENT_V6} is not ignored"

    maps.ignore_src.update(CLIENT_V6, 1)
    before, after, _ = _request_stamps(lab, maps, lab.client_path, POD_V6)
    assert after == before


@pytest.mark.parametrize("ignore_localhost", [True, False])
async def test_tracker_reports_monotonic_seconds(lab: Lab, ignore_localhost: bool) -> None:
    pod = Pod("tracker-pod", lab.pod_path, PluginSettings(bpf_root=lab.bpffs))
    lab.defer(pod.teardown)
    container = ContainerInfo(id="c1", bundle="/nonexistent", namespace="test",
                              netns_path=lab.pod_path)
    tracker = EbpfActivityTracker(pod, container, TrackerFilter(
        ignore_localhost=ignore_localhost, ignore_sources=(CLIENT_V6,)))
    lab.server(APP_PORT, "APP")

    await tracker.track([APP_PORT])
    assert pod.last_loader_result is not None and pod.last_loader_result["loaded"]
    assert tracker.last_activity() is None

    assert request(lab.pod_path, "127.0.0.1", APP_PORT).tag == "APP"
    assert (tracker.last_activity() is None) == ignore_localhost
    assert request(lab.client_path, POD_V6, APP_PORT).tag == "APP"  # ignored source
    assert (tracker.last_activity() is None) == ignore_localhost

    assert request(lab.client_path, POD_V4, APP_PORT).tag == "APP"
    await asyncio.sleep(0.1)  # the client's last ACK is still on its way and counts too
    last = tracker.last_activity()
    assert last is not None
    assert 0 <= time.monotonic() - last < 1.0

    await tracker.track([APP_PORT, 9090])  # replacing the set keeps the existing stamp
    assert tracker.last_activity() == last
    await tracker.close()
    assert tracker.last_activity() is None
    assert pod.maps is not None and list(pod.maps.activity.keys()) == []
