"""Test lab for the eBPF redirector: two namespaces, a veth, a private bpffs, real sockets.

Each :class:`Lab` creates uniquely named namespaces (``zpebpf-<random>-p`` for the pod and
``-c`` for the client) joined by a veth pair whose ends are both called ``eth0``, mounts its
own bpffs instance in a temporary folder, and removes all of it in :meth:`Lab.close`, also
after a failure. Traffic stays inside these namespaces.

Sockets are created inside a namespace by a short-lived thread that joins it with setns(2)
(:func:`zeropod_ebpf_redirect.netns.run_in_netns`): a socket stays in the namespace it was
created in, so the test process drives clients and servers from its own threads, without
``ip netns exec`` and without child processes. The only processes started are the loader
helper and ``ip``/``tc``/``ethtool``, each waited for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from zeropod_ebpf_redirect.maps import PodMaps
from zeropod_ebpf_redirect.netns import run_in_netns

POD_V4, CLIENT_V4 = "10.251.0.2", "10.251.0.1"
POD_V6, CLIENT_V6 = "fd00:eb::2", "fd00:eb::1"
APP_PORT = 8080
ACTIVATOR_PORT = 32080


def _missing_requirements() -> str | None:
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root (network namespaces, bpffs mounts, loading eBPF programs)"
    missing = [tool for tool in ("ip", "tc", "ethtool") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: run scripts/setup"
    return None


MISSING = _missing_requirements()
requires_root = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def run(*argv: str, check: bool = True) -> str:
    """Run a command, return its stdout; raise with its stderr when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _quiet(*argv: str) -> None:
    """Run a cleanup command; a failure (already gone) is not an error."""
    run(*argv, check=False)


class Server:
    """A TCP server in a namespace; each request line gets ``TAG|local port|peer|len|head``."""

    def __init__(self, netns_path: str, port: int, tag: str) -> None:
        self.tag = tag
        self.port = port
        self.accepted = 0

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # v4-mapped too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", port))
            sock.listen(64)
            return sock

        self._sock = run_in_netns(netns_path, make)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        thread = threading.Thread(target=self._accept_loop, name=f"srv-{tag}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            with self._lock:
                self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        local_port = conn.getsockname()[1]
        peer = conn.getpeername()
        host = peer[0].removeprefix("::ffff:")
        buf = b""
        try:
            while not self._stop.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    reply = f"{self.tag}|{local_port}|{host}|{len(line)}|{line[:32].decode()}\n"
                    conn.sendall(reply.encode())
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in threads:
            thread.join(timeout=5)


@dataclass
class Reply:
    """One parsed server reply, plus what the client saw as its peer."""

    tag: str
    server_port: int
    client_host: str
    length: int
    head: str
    peer: tuple[Any, ...]

    @property
    def peer_port(self) -> int:
        return int(self.peer[1])


class Connection:
    """A client connection from a namespace; :meth:`ask` sends a line and reads the reply."""

    def __init__(self, netns_path: str, host: str, port: int, timeout: float = 3.0,
                 ip_options: bytes = b"") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = run_in_netns(netns_path, lambda: socket.socket(family, socket.SOCK_STREAM))
        self.sock.settimeout(timeout)
        try:
            if ip_options:  # IPv4 header options on every packet: IHL > 5
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
            self.sock.connect((host, port))
        except BaseException:
            self.sock.close()
            raise
        self.peer: tuple[Any, ...] = self.sock.getpeername()
        self._file = self.sock.makefile("rb")

    def ask(self, data: bytes) -> Reply:
        self.sock.sendall(data + b"\n")
        line = self._file.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        tag, port, host, length, head = line.decode().rstrip("\n").split("|", 4)
        return Reply(tag, int(port), host, int(length), head, self.peer)

    def close(self) -> None:
        """Close gracefully: send FIN, wait for the server's FIN, then release the socket."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while self._file.read(65536):
                pass
        except OSError:
            pass
        self._file.close()
        self.sock.close()


def request(netns_path: str, host: str, port: int, data: bytes = b"hello",
            timeout: float = 3.0) -> Reply:
    """Connect, send one line, read the reply, close."""
    conn = Connection(netns_path, host, port, timeout)
    try:
        return conn.ask(data)
    finally:
        conn.close()


@dataclass
class Lab:
    """Pod and client namespaces, a veth between them, and a private bpffs."""

    pod: str
    client: str
    base: Path
    bpffs: Path
    _cleanups: list[Callable[[], object]] = field(default_factory=list)

    @property
    def pod_path(self) -> str:
        return f"/var/run/netns/{self.pod}"

    @property
    def client_path(self) -> str:
        return f"/var/run/netns/{self.client}"

    @classmethod
    def create(cls, base: Path) -> Lab:
        suffix = secrets.token_hex(3)
        lab = cls(pod=f"zpebpf-{suffix}-p", client=f"zpebpf-{suffix}-c", base=base,
                  bpffs=base / "bpffs")
        try:
            for name in (lab.pod, lab.client):
                run("ip", "netns", "add", name)
                lab.defer(functools.partial(_quiet, "ip", "netns", "del", name))
            run("ip", "-n", lab.pod, "link", "add", "eth0", "type", "veth", "peer", "name",
                "eth0", "netns", lab.client)
            for name, v4, v6 in ((lab.pod, POD_V4, POD_V6), (lab.client, CLIENT_V4, CLIENT_V6)):
                run("ip", "-n", name, "link", "set", "lo", "up")
                run("ip", "-n", name, "addr", "add", f"{v4}/24", "dev", "eth0")
                run("ip", "-n", name, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
                run("ip", "-n", name, "link", "set", "eth0", "up")
            lab.bpffs.mkdir(parents=True)
            run("mount", "-t", "bpf", "bpf", str(lab.bpffs))
            lab.defer(functools.partial(_quiet, "umount", "-l", str(lab.bpffs)))
        except BaseException:
            lab.close()
            raise
        return lab

    def defer(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` in :meth:`close` (before the namespaces go)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        errors = []
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # noqa: BLE001 - keep cleaning, report at the end
                errors.append(exc)
        if errors:
            raise RuntimeError(f"lab cleanup failed: {errors}")

    # --- programs ------------------------------------------------------------------------

    def pin_dir(self, name: str = "pod") -> Path:
        return self.bpffs / name

    def loader(self, *args: str, netns: str | None = None, pin_dir: Path | None = None,
               expect_ok: bool = True) -> dict[str, Any]:
        """Run the loader helper process and return its JSON result line."""
        argv = [sys.executable, "-m", "zeropod_ebpf_redirect.loader",
                "--netns", netns or self.pod_path, "--pin-dir", str(pin_dir or self.pin_dir()),
                *args]
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=60)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no result line; stderr:\n{proc.stderr}"
        result: dict[str, Any] = json.loads(lines[-1])
        if expect_ok:
            assert result["ok"], f"{result}\nstderr:\n{proc.stderr}"
            assert proc.returncode == 0
        return result

    def load(self, pin_dir: Path | None = None) -> PodMaps:
        """Load and attach in the pod namespace, and open the pinned maps."""
        self.loader(pin_dir=pin_dir)
        maps = PodMaps.open(pin_dir or self.pin_dir())
        self.defer(maps.close)
        return maps

    def server(self, port: int, tag: str, netns: str | None = None) -> Server:
        srv = Server(netns or self.pod_path, port, tag)
        self.defer(srv.close)
        return srv

    def tc_filters(self, iface: str, hook: str, netns: str | None = None) -> list[str]:
        """``tc filter show`` lines that describe an actual filter (they carry a handle)."""
        out = run("tc", "-n", netns or self.pod, "filter", "show", "dev", iface, hook)
        return [line for line in out.splitlines() if "handle" in line]

    def offload_off(self) -> None:
        """Switch checksum offload and segmentation off on both veth ends."""
        for name in (self.pod, self.client):
            run("ip", "netns", "exec", name, "ethtool", "-K", "eth0", "tx", "off", "tso", "off",
                "gso", "off")
