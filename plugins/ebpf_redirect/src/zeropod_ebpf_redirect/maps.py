"""The map layout of ``bpf/redirect.c`` as seen from Python, and the pins of one pod.

Everything that must agree with the C file lives here (names, key/value layouts, setting and
counter indexes), so a change to the program has one place to be mirrored. Opening checks the
key/value sizes of every pinned map, so pins left by an incompatible version fail loudly
instead of being misread.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from . import bpfsys
from .bpfsys import U8, U16, U32, U64, Map, PerCpuMap, StructCodec

MAP_NAMES = ("redirects", "reverse", "activity", "conns", "ignore_src", "settings", "stats")
PROG_INGRESS = "zeropod_ingress"
PROG_EGRESS = "zeropod_egress"
PROG_NAMES = (PROG_INGRESS, PROG_EGRESS)
PIN_NAMES = MAP_NAMES + PROG_NAMES
"""Every pin the loader leaves in a pod's pin directory (maps pinned by name, and programs)."""

# settings array indexes and flags (SETTING_* / FLAG_* in redirect.c)
SETTING_FLAGS = 0
SETTING_NETNS_COOKIE = 1
FLAG_IGNORE_LOCALHOST = 1
IGNORE_CAPACITY = 256  # max_entries of ignore_src in bpf/redirect.c

# per-CPU counters (STAT_* in redirect.c)
STAT_NAMES = ("ingress_seen", "ingress_redirected", "egress_seen", "egress_rewritten")

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def pack_addr(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16 bytes as the program stores addresses: IPv6 as is, IPv4 v4-mapped (::ffff:a.b.c.d)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return _V4_MAPPED_PREFIX + ip.packed
    return ip.packed


def unpack_addr(raw: bytes) -> str:
    """The inverse of :func:`pack_addr`, as a string (v4-mapped addresses come back as IPv4)."""
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


@dataclass(frozen=True)
class ConnKey:
    """Key of the ``conns`` map: one client connection to one app port."""

    client: str
    client_port: int
    app_port: int


ADDR = StructCodec[str]("=16s", lambda a: (pack_addr(a),), unpack_addr)
CONN_KEY = StructCodec[ConnKey](
    "=16sHH",
    lambda k: (pack_addr(k.client), k.client_port, k.app_port),
    lambda addr, cport, aport: ConnKey(unpack_addr(addr), cport, aport),
)


@dataclass
class PodMaps:
    """The open maps of one pod's program instance (fds shared by its redirector and tracker).

    :ivar redirects: app port -> activator port; present while the app is scaled down.
    :ivar reverse: activator port -> app port; egress source-port rewrite.
    :ivar activity: app port -> ``bpf_ktime_get_ns()`` of the last packet (0 = never).
    :ivar conns: connection -> activator port it started on (LRU, sticky across release).
    :ivar ignore_src: peer addresses whose packets are not activity (node, kubelet).
    :ivar settings: ``SETTING_*`` values (flags; the netns cookie written by the loader).
    :ivar stats: per-CPU counters, ``STAT_NAMES`` order.
    """

    pin_dir: Path
    redirects: Map[int, int]
    reverse: Map[int, int]
    activity: Map[int, int]
    conns: Map[ConnKey, int]
    ignore_src: Map[str, int]
    settings: Map[int, int]
    stats: PerCpuMap[int, int]

    @classmethod
    def open(cls, pin_dir: str | os.PathLike[str]) -> PodMaps:
        """Open every pinned map under ``pin_dir`` (``BPF_OBJ_GET``, about 0.1 ms in total)."""
        base = Path(pin_dir)
        opened: list[Map[int, int] | Map[ConnKey, int] | Map[str, int] | PerCpuMap[int, int]] = []
        try:
            redirects = Map.open(base / "redirects", U16, U16)
            opened.append(redirects)
            reverse = Map.open(base / "reverse", U16, U16)
            opened.append(reverse)
            activity = Map.open(base / "activity", U16, U64)
            opened.append(activity)
            conns = Map.open(base / "conns", CONN_KEY, U16)
            opened.append(conns)
            ignore_src = Map.open(base / "ignore_src", ADDR, U8)
            opened.append(ignore_src)
            settings = Map.open(base / "settings", U32, U64)
            opened.append(settings)
            stats = PerCpuMap.open(base / "stats", U32, U64)
        except BaseException:
            for m in opened:
                m.close()
            raise
        return cls(base, redirects, reverse, activity, conns, ignore_src, settings, stats)

    def __enter__(self) -> PodMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in (self.redirects, self.reverse, self.activity, self.conns, self.ignore_src,
                  self.settings, self.stats):
            m.close()

    def counters(self) -> dict[str, int]:
        """The program's packet counters, summed over CPUs."""
        out = {}
        for idx, name in enumerate(STAT_NAMES):
            values = self.stats.lookup(idx)
            out[name] = sum(values) if values else 0
        return out

    def clear(self) -> None:
        """Empty every map the program acts on, which makes a still-attached program inert."""
        for port_map in (self.redirects, self.reverse, self.activity):
            for port in list(port_map.keys()):
                port_map.delete(port)
        for address in list(self.ignore_src.keys()):
            self.ignore_src.delete(address)
        for conn in list(self.conns.keys()):
            self.conns.delete(conn)
        self.settings.update(SETTING_FLAGS, 0)


def netns_cookie_of_pins(pin_dir: str | os.PathLike[str]) -> int | None:
    """The netns cookie the loader recorded in ``pin_dir``'s settings map (None if unreadable)."""
    try:
        with Map.open(Path(pin_dir) / "settings", U32, U64) as settings:
            return settings.lookup(SETTING_NETNS_COOKIE)
    except (OSError, bpfsys.MapLayoutError):
        return None
