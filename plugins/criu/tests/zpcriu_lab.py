"""Test lab for the criu plugin: real runc containers driven by the shim's own pieces.

The core's scaler is not there yet, so the lab plays the shim's part: it installs
:class:`~zeropod_core.shim.reaper.Reaper` on the test's event loop (the only reaper; the test
process becomes a child subreaper, as the shim is), runs every runc command through
:class:`~zeropod_core.shim.runc.Runc`, gives the container pipes for stdio with
:class:`~zeropod_core.shim.stdio.ProcessIO` (``replace_pipes`` on restore) and implements
:class:`~zeropod_core.providers.RuntimeHandle` over that (:class:`LabRuntime`).

Each :class:`LabContainer` has its own runc root, unique id, bundle (``runc spec`` patched:
no terminal, the app's args, the network namespace by path, writable root) and pod/client
namespace pair (:class:`~zeropod_core.lab.netns.PodNetwork`); the root filesystems are built
from the project's offline images once per process. :meth:`Lab.close` removes all of it, also
after a failure. Traffic only goes to addresses inside the lab's namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zeropod_core.lab.http import HttpError, HttpResponse, http_get
from zeropod_core.lab.images import busybox_httpd_spec, counter_app_spec, layer_tar
from zeropod_core.lab.netns import PodNetwork, run_in_netns
from zeropod_core.model import ContainerInfo
from zeropod_core.providers import RuncResult, StdioPipes
from zeropod_core.shim.reaper import Exit, Reaper, become_subreaper
from zeropod_core.shim.runc import Runc, RuncError
from zeropod_core.shim.runtime import runc_result
from zeropod_core.shim.stdio import ProcessIO, StdioPaths

APP_PORT = 8080
IMAGES = {"busybox": busybox_httpd_spec, "counter": counter_app_spec}


def missing_requirements() -> str | None:
    """Why the real-stack tests cannot run here, or None."""
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root (runc, CRIU, network namespaces, cgroups)"
    missing = [t for t in ("runc", "criu", "ip", "unshare") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}: run scripts/setup"
    return None


MISSING = missing_requirements()

_rootfs_cache: dict[str, Path] = {}
_rootfs_dir: Path | None = None


def rootfs(image: str) -> Path:
    """The image's root filesystem, extracted once per process (containers only read it)."""
    global _rootfs_dir
    if image not in _rootfs_cache:
        if _rootfs_dir is None:
            _rootfs_dir = Path(tempfile.mkdtemp(prefix="zpcriu-rootfs-"))
        target = _rootfs_dir / image
        tmp = _rootfs_dir / f".{image}.tmp"
        tmp.mkdir()
        data = layer_tar(IMAGES[image]())
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            if hasattr(tarfile, "fully_trusted_filter"):  # Python >= 3.11.4
                tar.extractall(tmp, filter="fully_trusted")
            else:
                tar.extractall(tmp)
        tmp.rename(target)
        _rootfs_cache[image] = target
    return _rootfs_cache[image]


def remove_rootfs_cache() -> None:
    global _rootfs_dir
    if _rootfs_dir is not None:
        shutil.rmtree(_rootfs_dir, ignore_errors=True)
    _rootfs_dir = None
    _rootfs_cache.clear()


class LabRuntime:
    """:class:`~zeropod_core.providers.RuntimeHandle` of one lab container (as the shim's)."""

    def __init__(self, info: ContainerInfo, bundle: Path, runc: Runc, pipes: ProcessIO,
                 pid: int) -> None:
        self._info, self._bundle, self._runc, self.io = info, bundle, runc, pipes
        self.pid = pid
        self.calls: list[tuple[str, ...]] = []

    @property
    def container(self) -> ContainerInfo:
        return self._info

    @property
    def bundle(self) -> Path:
        return self._bundle

    @property
    def runc_root(self) -> Path:
        return self._runc.root

    @property
    def init_pid(self) -> int:
        return self.pid

    async def runc(self, *args: str, stdio: StdioPipes | None = None,
                   timeout_s: float | None = None, netns: str | None = None) -> RuncResult:
        self.calls.append(args)
        return await runc_result(self._runc, *args, stdio=stdio, timeout_s=timeout_s,
                                 netns=netns)

    def new_stdio(self) -> StdioPipes:
        stdin, stdout, stderr = self.io.replace_pipes(asyncio.get_running_loop())
        return StdioPipes(stdin, stdout, stderr)


@dataclass
class LabContainer:
    """A running (or checkpointed) runc container of the lab."""

    id: str
    dir: Path
    bundle: Path
    net: PodNetwork
    runc: Runc
    runtime: LabRuntime
    info: ContainerInfo
    exits: dict[int, Exit] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.runtime.pid

    @property
    def stdout_path(self) -> Path:
        return self.dir / "stdout.log"

    async def get(self, path: str = "/", *, timeout: float = 5.0) -> HttpResponse:
        """One HTTP request from the client namespace (off the loop, which keeps reaping)."""
        return await asyncio.to_thread(http_get, self.net.client_path, self.net.pod_ip,
                                       APP_PORT, path, timeout=timeout)

    async def wait_http(self, deadline_s: float = 10.0) -> HttpResponse:
        end = time.monotonic() + deadline_s
        while True:
            try:
                return await self.get(timeout=max(0.05, end - time.monotonic()))
            except HttpError:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.01)

    async def state(self) -> dict[str, Any] | None:
        """``runc state`` (None once the container is gone, e.g. after a checkpoint)."""
        try:
            data = await self.runc.json("state", self.id)
        except RuncError:
            return None
        return data if isinstance(data, dict) else None

    def watch(self, reaper: Reaper, pid: int) -> None:
        reaper.watch(pid, lambda exited: self.exits.__setitem__(exited.pid, exited))


class Prober:
    """Times "restore started → first complete HTTP response" from the client namespace.

    Runs in a thread (the restore runs on the loop). Sockets are made in the client
    namespace in batches, so one attempt costs a connect, not a thread: a refused connect is
    retried after 0.2 ms, a dropped SYN (CRIU's nftables lock) after a 2 ms connect timeout.
    """

    def __init__(self, container: LabContainer, *, timeout_s: float = 10.0) -> None:
        self.container, self.timeout_s = container, timeout_s
        self.response_at: float | None = None
        self.body = b""
        self.error = ""
        self._start = 0.0
        self._thread = threading.Thread(target=self._run, name="zpcriu-prober", daemon=True)

    def start(self) -> float:
        self._start = time.monotonic()
        self._thread.start()
        return self._start

    def _sockets(self, count: int) -> list[socket.socket]:
        return run_in_netns(self.container.net.client_path,
                            lambda: [socket.socket() for _ in range(count)])

    def _attempt(self, sock: socket.socket) -> bytes | None:
        net = self.container.net
        try:
            sock.settimeout(0.002)
            sock.connect((net.pod_ip, APP_PORT))
            sock.settimeout(2.0)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {net.pod_ip}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            return None
        finally:
            sock.close()
        data = b"".join(chunks)
        return data if data.startswith(b"HTTP/") else None

    def _run(self) -> None:
        pool: list[socket.socket] = []
        end = self._start + self.timeout_s
        try:
            while time.monotonic() < end:
                if not pool:
                    pool = self._sockets(64)
                data = self._attempt(pool.pop())
                if data is not None:
                    self.response_at = time.monotonic()
                    self.body = data
                    return
                time.sleep(0.0002)
            self.error = f"no HTTP response within {self.timeout_s} s"
        finally:
            for sock in pool:
                sock.close()

    async def wait(self) -> float:
        """Seconds from :meth:`start` to the first complete response."""
        await asyncio.to_thread(self._thread.join)
        if self.response_at is None:
            raise HttpError(self.error or "prober failed")
        return self.response_at - self._start


class Lab:
    """Reaper, temporary directories, containers and namespaces of one test."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tmp: Path) -> None:
        self.loop, self.tmp = loop, tmp
        self.reaper = Reaper()
        self.containers: list[LabContainer] = []
        self.networks: list[PodNetwork] = []

    @classmethod
    def create(cls, tmp: Path) -> Lab:
        """Become a subreaper and install the lab's reaper on the running loop."""
        become_subreaper()
        lab = cls(asyncio.get_running_loop(), tmp)
        lab.reaper.install(lab.loop)
        return lab

    def runc_for(self, root: Path, bundle: Path) -> Runc:
        return Runc(self.reaper, root, bundle / "log.json")

    async def _spec(self, runc: Runc, bundle: Path, image: str, net: PodNetwork,
                    env: Sequence[str], annotations: Mapping[str, str],
                    args: Sequence[str] | None) -> dict[str, Any]:
        await runc.run("spec", "--bundle", str(bundle))
        spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
        image_spec = IMAGES[image]()
        process = spec["process"]
        process["terminal"] = False
        process["args"] = list(args) if args is not None else list(image_spec.cmd)
        process["env"] = [*image_spec.env, *env]
        process["cwd"] = "/"
        spec["root"] = {"path": str(rootfs(image)), "readonly": False}
        spec["hostname"] = "zpcriu"
        spec["linux"]["namespaces"] = [
            {"type": ns["type"], "path": str(net.pod_path)} if ns["type"] == "network" else ns
            for ns in spec["linux"]["namespaces"]]
        if annotations:
            spec.setdefault("annotations", {}).update(annotations)
        return spec

    async def start(self, image: str = "busybox", *, env: Sequence[str] = (),
                    annotations: Mapping[str, str] | None = None,
                    args: Sequence[str] | None = None,
                    modify_spec: Any = None) -> LabContainer:
        """Create and start a container of ``image`` in a fresh pod namespace.

        :param modify_spec: called as ``modify_spec(info, spec)`` before ``runc create`` (the
            plugin's ``zeropod_modify_spec``), as the shim does.
        """
        cid = f"zpcriu-{secrets.token_hex(4)}"
        cdir = self.tmp / cid
        bundle, root = cdir / "bundle", cdir / "runc"
        bundle.mkdir(parents=True)
        root.mkdir()
        net = PodNetwork.create("zpcriu")
        self.networks.append(net)
        runc = self.runc_for(root, bundle)
        spec = await self._spec(runc, bundle, image, net, env, annotations or {}, args)
        info = ContainerInfo(id=cid, bundle=str(bundle), namespace="zpcriu-lab",
                             annotations=dict(spec.get("annotations", {})),
                             netns_path=str(net.pod_path))
        if modify_spec is not None:
            modify_spec(info, spec)
            info = ContainerInfo(id=cid, bundle=str(bundle), namespace="zpcriu-lab",
                                 annotations=dict(spec.get("annotations", {})),
                                 netns_path=str(net.pod_path))
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        for name in ("stdout.log", "stderr.log"):
            (cdir / name).touch()
        pipes = ProcessIO.pipes(StdioPaths(stdout=str(cdir / "stdout.log"),
                                           stderr=str(cdir / "stderr.log")))
        pid_file = cdir / "init.pid"
        runtime = LabRuntime(info, bundle, runc, pipes, 0)
        container = LabContainer(cid, cdir, bundle, net, runc, runtime, info)
        self.containers.append(container)
        try:
            await runc.run("create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid,
                           stdio=pipes.child_fds)
        finally:
            pipes.close_child_ends()
        pipes.start_copying(self.loop)
        runtime.pid = int(pid_file.read_text())
        container.watch(self.reaper, runtime.pid)
        await runc.run("start", cid)
        return container

    def restored(self, container: LabContainer, pid: int) -> None:
        """What the shim does after a restore: the new PID is the init's, watched for exits."""
        container.runtime.pid = pid
        container.watch(self.reaper, pid)

    async def close(self) -> None:
        for container in self.containers:
            with contextlib.suppress(RuncError):
                await container.runc.run("delete", "--force", container.id)
            container.runtime.io.close()
        for net in self.networks:
            net.delete()
        with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
            self.loop.remove_signal_handler(signal.SIGCHLD)
        self.reaper.reap()
