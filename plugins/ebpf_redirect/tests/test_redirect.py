"""The tc programs on real traffic: redirect, release with sticky connections, offloads off.

Programs are loaded by the real loader helper into a lab pod namespace; map entries are
written with bpfsys exactly as the shim does. Servers tag their replies (``ACTIVATOR`` on the
activator port, ``APP`` on the app port) and report the port the connection arrived on.
"""

from __future__ import annotations

import socket

import pytest
from zpebpf_lab import (
    ACTIVATOR_PORT,
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

from zeropod_ebpf_redirect.maps import ConnKey, PodMaps

pytestmark = requires_root

# (client namespace, destination, client address as the server sees it, path)
PATHS = [
    ("client", POD_V4, CLIENT_V4, "ipv4 over veth"),
    ("client", POD_V6, CLIENT_V6, "ipv6 over veth"),
    ("pod", "127.0.0.1", "127.0.0.1", "ipv4 over lo"),
    ("pod", "::1", "::1", "ipv6 over lo"),
    ("pod", POD_V4, POD_V4, "pod ip from inside the pod (lo)"),
    ("pod", POD_V6, POD_V6, "pod ipv6 from inside the pod (lo)"),
]


def _ns(lab: Lab, which: str) -> str:
    return lab.pod_path if which == "pod" else lab.client_path


def _redirect(maps: PodMaps, app: int = APP_PORT, activator: int = ACTIVATOR_PORT) -> None:
    maps.reverse.update(activator, app)
    maps.redirects.update(app, activator)


@pytest.mark.parametrize(("src", "dst", "seen_as", "path"), PATHS, ids=[p[3] for p in PATHS])
def test_redirect_reaches_activator_and_client_sees_app_port(
    lab: Lab, src: str, dst: str, seen_as: str, path: str
) -> None:
    maps = lab.load()
    lab.server(ACTIVATOR_PORT, "ACTIVATOR")
    _redirect(maps)

    reply = request(_ns(lab, src), dst, APP_PORT, b"hello " + path.encode())

    assert reply.tag == "ACTIVATOR"
    assert reply.server_port == ACTIVATOR_PORT  # rewritten on ingress
    assert reply.peer_port == APP_PORT  # and back on egress: the client never sees 32080
    assert reply.client_host == seen_as
    assert reply.head == ("hello " + path)[:32]  # the server echoes the first 32 bytes
    counters = maps.counters()
    assert counters["ingress_redirected"] > 0
    assert counters["egress_rewritten"] > 0
    assert maps.conns.lookup(ConnKey(seen_as, _client_port_of(maps, seen_as), APP_PORT)) == (
        ACTIVATOR_PORT)


def _client_port_of(maps: PodMaps, client: str) -> int:
    ports = [key.client_port for key, _ in maps.conns.items() if key.client == client]
    assert len(ports) == 1, ports
    return ports[0]


def test_without_redirect_traffic_goes_to_the_app(lab: Lab) -> None:
    maps = lab.load()
    lab.server(APP_PORT, "APP")
    lab.server(ACTIVATOR_PORT, "ACTIVATOR")
    maps.reverse.update(ACTIVATOR_PORT, APP_PORT)  # reverse alone redirects nothing

    for src, dst, _, _ in PATHS:
        reply = request(_ns(lab, src), dst, APP_PORT)
        assert (reply.tag, reply.server_port, reply.peer_port) == ("APP", APP_PORT, APP_PORT)
    assert maps.counters()["ingress_redirected"] == 0
    assert list(maps.conns.keys()) == []


@pytest.mark.parametrize(("src", "dst"), [("client", POD_V4), ("client", POD_V6),
                                          ("pod", "127.0.0.1")],
                         ids=["ipv4 veth", "ipv6 veth", "ipv4 lo"])
def test_release_keeps_proxied_connection_on_activator(lab: Lab, src: str, dst: str) -> None:
    maps = lab.load()
    lab.server(ACTIVATOR_PORT, "ACTIVATOR")
    _redirect(maps)
    proxied = Connection(_ns(lab, src), dst, APP_PORT)
    lab.defer(proxied.close)
    assert proxied.ask(b"before release").tag == "ACTIVATOR"

    # The app is restored: it listens, and the redirect entry goes (what release() does).
    lab.server(APP_PORT, "APP")
    maps.redirects.delete(APP_PORT)

    fresh = request(_ns(lab, src), dst, APP_PORT, b"new connection")
    assert (fresh.tag, fresh.server_port, fresh.peer_port) == ("APP", APP_PORT, APP_PORT)
    # The connection that started on the activator stays there, and is not reset.
    for i in range(3):
        reply = proxied.ask(b"after release %d" % i)
        assert (reply.tag, reply.server_port, reply.peer_port) == (
            "ACTIVATOR", ACTIVATOR_PORT, APP_PORT)
    assert [key.app_port for key, _ in maps.conns.items()] == [APP_PORT]


def test_checksum_offload_off_on_both_veth_ends(lab: Lab) -> None:
    """With offloads the kernel fills checksums later and hides a missing fix; not here."""
    lab.offload_off()
    for ns in (lab.pod, lab.client):
        features = run("ip", "netns", "exec", ns, "ethtool", "-k", "eth0")
        assert "tx-checksumming: off" in features
    maps = lab.load()
    lab.server(ACTIVATOR_PORT, "ACTIVATOR")
    _redirect(maps)

    for src, dst, _, path in PATHS:
        reply = request(_ns(lab, src), dst, APP_PORT, path.encode(), timeout=3)
        assert (reply.tag, reply.peer_port) == ("ACTIVATOR", APP_PORT), path
    # Bulk: many full-size segments, each rewritten and checksummed in both directions.
    bulk = b"x" * (4 * 1024 * 1024)
    for dst in (POD_V4, POD_V6):
        reply = request(lab.client_path, dst, APP_PORT, bulk, timeout=10)
        assert (reply.tag, reply.length) == ("ACTIVATOR", len(bulk))

    # Release with offloads off: the sticky connection and new connections still work.
    proxied = Connection(lab.client_path, POD_V4, APP_PORT)
    lab.defer(proxied.close)
    assert proxied.ask(b"a").tag == "ACTIVATOR"
    lab.server(APP_PORT, "APP")
    maps.redirects.delete(APP_PORT)
    assert request(lab.client_path, POD_V4, APP_PORT).tag == "APP"
    assert request(lab.client_path, POD_V6, APP_PORT, bulk, timeout=10).length == len(bulk)
    assert proxied.ask(b"b").tag == "ACTIVATOR"


def test_ipv4_header_with_options(lab: Lab) -> None:
    """The TCP header is found after the IPv4 options (IHL 6 here), not at a fixed offset."""
    maps = lab.load()
    lab.server(ACTIVATOR_PORT, "ACTIVATOR")
    _redirect(maps)
    options = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL: one extra 32-bit word
    for netns, dst in ((lab.client_path, POD_V4), (lab.pod_path, "127.0.0.1")):
        conn = Connection(netns, dst, APP_PORT, ip_options=options)
        try:
            assert conn.sock.getsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, 40) == options
            reply = conn.ask(b"with options")
        finally:
            conn.close()
        assert (reply.tag, reply.server_port, reply.peer_port) == (
            "ACTIVATOR", ACTIVATOR_PORT, APP_PORT)
