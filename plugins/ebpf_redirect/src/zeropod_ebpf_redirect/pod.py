"""One pod's program instance as the shim sees it: where its pins are, loading it, removing it.

All containers of a pod share one network namespace, hence one program instance and one set of
maps (a shared program cannot tell pods apart on ingress, see the plugin README). The shim keeps one
:class:`Pod` per pod in a :class:`PodRegistry`; the redirector and tracker of each container
borrow its map fds and its activator port allocator.

Loading is lazy and asynchronous: the first ``await`` of a provider method runs the loader
helper (:mod:`.loader`) as a subprocess, unless the pins are already there for this very
namespace (a restarted shim), in which case it only opens them. The shim never imports libbpf
or pyroute2.

Pin directory names: ``sb-<sandbox id>`` when the CRI sandbox id is known (the sandbox and its
app containers name their namespace by different paths: a CNI netns file for the sandbox,
``/proc/<pid>/ns/net`` for the others), else ``ns-<inode of the namespace>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from typing import Any

from zeropod_core.model import ContainerInfo

from . import bpffs, maps, netns
from .maps import FLAG_IGNORE_LOCALHOST, SETTING_FLAGS, PodMaps
from .node_addresses import NodeAddresses
from .ports import ActivatorPorts
from .settings import PluginSettings, TrackerFilter

log = logging.getLogger("zeropod.ebpf.pod")

SANDBOX_ID_ANNOTATIONS = ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID")
LOADER_MODULE = "zeropod_ebpf_redirect.loader"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class LoaderError(RuntimeError):
    """The loader helper failed; the message carries its error and the tail of its stderr."""


def pod_key(container: ContainerInfo) -> str:
    """The name of the container's pod pin directory (raises OSError if it cannot be derived)."""
    for name in SANDBOX_ID_ANNOTATIONS:
        sandbox_id = container.annotations.get(name, "")
        if sandbox_id:
            return "sb-" + _UNSAFE.sub("_", sandbox_id)[:128]
    if container.sandbox:
        return "sb-" + _UNSAFE.sub("_", container.id)[:128]
    if not container.netns_path:
        raise FileNotFoundError(f"container {container.id} has no network namespace path")
    return f"ns-{os.stat(container.netns_path).st_ino}"


def _last_json(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _stderr_tail(stderr: bytes, lines: int = 8) -> str:
    return "\n".join(stderr.decode(errors="replace").strip().splitlines()[-lines:])


class Pod:
    """The program instance of one pod: pins, open maps, activator ports, tracker filters."""

    def __init__(self, key: str, netns_path: str, settings: PluginSettings) -> None:
        self.key = key
        self.netns_path = netns_path
        self.settings = settings
        self.pin_dir = settings.bpf_root / key
        self.ports = ActivatorPorts(settings.activator_ports)
        self.maps: PodMaps | None = None
        self.containers: set[str] = set()
        self.sandbox_seen = False
        self.closed = False
        self.last_loader_result: dict[str, Any] | None = None
        self._filters: dict[str, TrackerFilter] = {}
        self._node = NodeAddresses()
        self._node_applied: frozenset[str] = frozenset()
        self._lock: asyncio.Lock | None = None

    # --- loading ---------------------------------------------------------------------------

    async def ensure_loaded(self) -> PodMaps:
        """The pod's open maps, loading and attaching the programs first if needed."""
        if self.maps is not None:
            return self.maps
        if self.closed:
            raise RuntimeError(f"pod {self.key} was torn down")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.maps is None:
                if not self._pins_are_ours():
                    self.last_loader_result = await self._run_loader()
                opened = PodMaps.open(self.pin_dir)
                for activator, app in opened.reverse.items():
                    self.ports.adopt(activator, app)
                self.maps = opened
            return self.maps

    def _pins_are_ours(self) -> bool:
        """True when complete pins exist for this very namespace (a restarted shim's)."""
        if not bpffs.pins_complete(self.pin_dir):
            return False
        try:
            cookie = netns.run_in_netns(self.netns_path, netns.current_cookie)
        except OSError:
            return False
        return maps.netns_cookie_of_pins(self.pin_dir) == cookie

    def _loader_argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", LOADER_MODULE, "--netns", self.netns_path,
                "--pin-dir", str(self.pin_dir), "--ifaces", ",".join(self.settings.ifaces),
                *extra]

    def _check_result(self, stdout: bytes, stderr: bytes, action: str) -> dict[str, Any]:
        # The JSON line decides, not the exit status: a subreaping shim may reap the helper
        # before asyncio does and then the exit status is lost.
        result = _last_json(stdout)
        if result is None or not result.get("ok"):
            error = result.get("error") if result else "no result line"
            raise LoaderError(f"{action} for pod {self.key} failed: {error}\n"
                              f"{_stderr_tail(stderr)}".rstrip())
        return result

    async def _run_loader(self) -> dict[str, Any]:
        bpffs.ensure_mounted(self.settings.bpf_root)
        argv = self._loader_argv()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(),
                                                    self.settings.loader_timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LoaderError(f"loader for pod {self.key} timed out after "
                              f"{self.settings.loader_timeout_s} s") from None
        result = self._check_result(stdout, stderr, "attach")
        log.info("pod redirector attached", extra={
            "pod": self.key, "netns": self.netns_path, "pin_dir": str(self.pin_dir),
            "loaded": result.get("loaded"), "timings_ms": result.get("timings_ms"),
            "prog_ids": result.get("prog_ids")})
        return result

    def maps_if_loaded(self) -> PodMaps | None:
        """The open maps, without loading anything (for synchronous readers)."""
        return self.maps

    # --- pod-wide tracker filter ---------------------------------------------------------

    def set_tracker_filter(self, container_id: str, tracker: TrackerFilter | None) -> None:
        """Record a container's filter and apply the pod-wide one: loopback is ignored if any
        container asks for it, and the ignored sources are the union of all containers'."""
        if tracker is None:
            self._filters.pop(container_id, None)
        else:
            self._filters[container_id] = tracker
        self._apply_filters()

    def refresh_node_addresses(self) -> None:
        """Follow the node's addresses (throttled): called whenever activity is read."""
        if self.maps is not None and self._node_wanted() != self._node_applied:
            self._apply_filters()

    def _node_wanted(self) -> frozenset[str]:
        if any(f.ignore_node for f in self._filters.values()):
            return self._node.current()
        return frozenset()

    def _apply_filters(self) -> None:
        if self.maps is None:
            return
        flags = FLAG_IGNORE_LOCALHOST if any(
            f.ignore_localhost for f in self._filters.values()) else 0
        self.maps.settings.update(SETTING_FLAGS, flags)
        node = self._node_wanted()
        configured = {a for f in self._filters.values() for a in f.ignore_sources}
        room = maps.IGNORE_CAPACITY - len(configured)
        if len(node - configured) > room:
            log.warning("more node addresses than the ignore map holds; some still count as "
                        "activity", extra={"pod": self.key, "node_addresses": len(node),
                                           "capacity": maps.IGNORE_CAPACITY})
        sources = configured | set(sorted(node - configured)[:max(room, 0)])
        wanted = {maps.unpack_addr(maps.pack_addr(a)) for a in sources}
        self._node_applied = node
        present = set(self.maps.ignore_src.keys())
        for address in present - wanted:
            self.maps.ignore_src.delete(address)
        for address in wanted - present:
            self.maps.ignore_src.update(address, 1)

    # --- teardown ----------------------------------------------------------------------------

    def teardown(self) -> None:
        """Make the programs inert, detach them if the namespace still exists, remove the pins.

        Synchronous (called from the ``zeropod_container_deleted`` hook). The helper process
        is only needed when the namespace still exists (filters to remove); when it is gone
        the kernel already dropped the filters and unlinking the pins frees everything.
        """
        self.closed = True
        opened = self.maps
        self.maps = None
        if opened is None and bpffs.pins_complete(self.pin_dir):
            try:
                opened = PodMaps.open(self.pin_dir)
            except (OSError, ValueError) as exc:
                log.warning("cannot open pins to clear them", extra={
                    "pod": self.key, "error": str(exc)})
        if opened is not None:
            try:
                opened.clear()
            finally:
                opened.close()
        if netns.is_netns(self.netns_path):
            try:
                proc = subprocess.run(self._loader_argv("--detach"), capture_output=True,
                                      stdin=subprocess.DEVNULL,
                                      timeout=self.settings.loader_timeout_s, check=False)
                result = self._check_result(proc.stdout, proc.stderr, "detach")
                log.info("pod redirector detached", extra={
                    "pod": self.key, "filters_removed": result.get("filters_removed"),
                    "pins_removed": result.get("pins_removed"),
                    "timings_ms": result.get("timings_ms")})
            except (LoaderError, subprocess.TimeoutExpired, OSError) as exc:
                log.warning("detach helper failed; removing pins only (programs stay attached "
                            "but inert until the namespace goes away)",
                            extra={"pod": self.key, "error": str(exc)})
        removed = bpffs.remove_pins(self.pin_dir)
        log.info("pod pins removed", extra={"pod": self.key, "pin_dir": str(self.pin_dir),
                                            "removed": removed})


class PodRegistry:
    """The pods this shim process serves, and which of their containers it has seen."""

    def __init__(self) -> None:
        self._pods: dict[str, Pod] = {}
        self._container_pod: dict[str, str] = {}

    def pod_for(self, container: ContainerInfo, settings: PluginSettings) -> Pod:
        """The container's pod, created on first use; records the container as a user."""
        key = self._container_pod.get(container.id) or pod_key(container)
        pod = self._pods.get(key)
        if pod is None or pod.closed:
            pod = Pod(key, container.netns_path, settings)
            self._pods[key] = pod
        pod.containers.add(container.id)
        pod.sandbox_seen = pod.sandbox_seen or container.sandbox
        self._container_pod[container.id] = key
        return pod

    def pods(self) -> list[Pod]:
        return list(self._pods.values())

    def container_deleted(self, container: ContainerInfo, settings: PluginSettings) -> bool:
        """Forget a container; tear its pod down when the pod goes away. True if torn down.

        A pod goes away with its sandbox container, or, when no sandbox container was ever
        seen (a plain ``ctr run`` joining a namespace), with its last container.
        """
        key = self._container_pod.pop(container.id, None)
        if key is None:
            try:
                key = pod_key(container)
            except OSError:
                return False
        pod = self._pods.get(key)
        if pod is not None:
            pod.containers.discard(container.id)
            if not pod.closed:
                pod.set_tracker_filter(container.id, None)
            if not (container.sandbox or (not pod.sandbox_seen and not pod.containers)):
                return False
            del self._pods[key]
            pod.teardown()
            return True
        if container.sandbox and (settings.bpf_root / key).exists():
            # Pins from before a shim restart: this process never loaded them.
            Pod(key, container.netns_path, settings).teardown()
            return True
        return False
