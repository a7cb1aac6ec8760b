"""Entry point of ``zeropod-manager``.

Structured JSON logs; plugins of group ``zeropod.manager``; stops cleanly on SIGTERM/SIGINT
(links closed, HTTP server closed, nothing left behind). Settings (command line or
``ZEROPOD_*`` environment): the shims' socket folder and the HTTP listen address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from zeropod_core import logs
from zeropod_core.config import manager_socket_path, parse_switch
from zeropod_core.model import ContainerStatus, ManagedContainer, RoleName
from zeropod_core.plugins import ZeropodPluginManager, make_plugin_manager
from zeropod_core.providers import MigrationController, MigrationService

from .capabilities import core_capabilities
from .http import HttpServer, json_body
from .kube import KubeApi, KubeSettings, KubeUnavailable
from .node import Node
from .pods import PodUpdater

log = logging.getLogger("zeropod.manager")

HOUSEKEEPING_INTERVAL_S = 60.0


@dataclass(frozen=True)
class NodeSnapshot:
    """The node's containers at one moment (what a housekeeping thread may read)."""

    listed: tuple[ManagedContainer, ...]

    def containers(self) -> Sequence[ManagedContainer]:
        return self.listed


class Manager:
    """The node manager: links to shims, plugins, HTTP endpoints."""

    def __init__(self, socket_dir: str, pm: ZeropodPluginManager,
                 housekeeping_s: float = HOUSEKEEPING_INTERVAL_S,
                 kube_settings: KubeSettings | None = None,
                 node_api_socket: str = "") -> None:
        self.pm = pm
        self.housekeeping_s = housekeeping_s
        self.kube_settings = kube_settings or KubeSettings()
        self.kube: KubeApi | None = None
        self.kube_problem = ""  # why a wanted Kubernetes access is not there
        self.pods: PodUpdater | None = None
        self.node = Node(socket_dir, self._status_changed)
        self.started = time.time()
        self.capabilities: dict[str, Any] = {}
        self.registry: Any = None
        self.migration: MigrationService | None = None
        self.controller: MigrationController | None = None
        self.http = HttpServer({"/metrics": self._metrics, "/healthz": self._healthz,
                                "/status": self._status})
        # the shims' way to the manager (a unix socket): only served for the controller
        self.node_api_socket = node_api_socket or manager_socket_path(
            {"ZEROPOD_SOCKET_DIR": socket_dir})
        self.node_api = HttpServer({}, {"/v1/migration": self._migration_request})

    def _status_changed(self, record: ManagedContainer, status: ContainerStatus) -> None:
        for impl in reversed(self.pm.hook.zeropod_handle_status.get_hookimpls()):
            try:
                impl.function(status=status)
            except Exception:
                log.exception("plugin hook failed", extra={"hook": "zeropod_handle_status",
                                                           "plugin": impl.plugin_name})
        log.info("status", extra={"container": record.id, "pod": record.pod,
                                  "phase": record.phase})
        if self.pods is not None:
            self.pods.submit(status)

    def _connect_kube(self) -> None:
        """Kubernetes access when a switch wants it; the manager runs on without it."""
        settings = self.kube_settings
        if not settings.wanted:
            return
        try:
            self.kube = KubeApi.connect(settings)
        except KubeUnavailable as exc:
            self.kube_problem = str(exc)
            log.error("no Kubernetes access: status labels, events, in-place scaling and the "
                      "migration controller are off", extra={"reason": self.kube_problem})
            return
        resizer = None
        if settings.in_place_scaling:
            resizer = self.pm.hook.zeropod_make_pod_resizer(kube=self.kube)
            if resizer is None:
                self.kube_problem = "in-place scaling is on but no plugin provides a resizer " \
                                    "(install zeropod-resize)"
                log.error(self.kube_problem)
        if settings.status_labels or settings.status_events or settings.in_place_scaling:
            self.pods = PodUpdater(self.kube, self.pm, resizer)
        log.info("Kubernetes access", extra={"server": self.kube.server,
                                             "node": self.kube.node_name,
                                             **asdict(settings)})

    async def kube_health(self) -> dict[str, Any]:
        """What ``/healthz`` says about Kubernetes: switches, reachability, problems."""
        if self.kube is None:
            return {**asdict(self.kube_settings), "reachable": False,
                    "problem": self.kube_problem or "no Kubernetes switch is on"}
        report = await asyncio.to_thread(self.kube.check)
        report["resizer"] = self.pods is not None and self.pods.resizer is not None
        return report | ({"problem": self.kube_problem} if self.kube_problem else {})

    def setup(self) -> None:
        settings = {k: v for k, v in os.environ.items() if k.startswith("ZEROPOD_")}
        settings.update(self.kube_settings.as_settings())
        self.pm.hook.zeropod_manager_configure.call_historic(kwargs={"settings": settings})
        self._connect_kube()
        migration_kube = self.kube if self.kube_settings.migration else None
        # before the capabilities: the plugin reports there whether its service can run
        self.migration = self.pm.hook.zeropod_make_migration_service(settings=settings,
                                                                     kube=migration_kube)
        if migration_kube is not None:
            self.controller = self.pm.hook.zeropod_make_migration_controller(
                kube=migration_kube, node=self.node, service=self.migration,
                settings=settings)
            if self.controller is None:
                self.kube_problem = "the migration controller is on but no plugin provides " \
                                    "one (install zeropod-migration)"
                log.error(self.kube_problem)
        self.capabilities = core_capabilities()
        for result in self.pm.hook.zeropod_node_capabilities():
            self.capabilities.update(result)
        self.capabilities["plugins"] = [r.as_json() for r in self.pm.records]
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:
            log.warning("prometheus_client is not installed: /metrics stays empty")
        else:
            self.registry = CollectorRegistry(auto_describe=False)
            self.pm.hook.zeropod_register_collectors(registry=self.registry, node=self.node)
        log.info("node capabilities", extra={"capabilities": self.capabilities})

    async def _metrics(self) -> tuple[int, str, bytes]:
        await self.node.refresh()
        if self.registry is None:
            return 200, "text/plain; version=0.0.4", b""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    async def _healthz(self) -> tuple[int, str, bytes]:
        migration = ({"controller": False} if self.controller is None
                     else {"controller": True, "node_api": self.node_api_socket,
                           **self.controller.health()})
        return json_body({"ok": True, "uptime_s": round(time.time() - self.started, 1),
                          "shims": len(self.node.links), "capabilities": self.capabilities,
                          "kubernetes": await self.kube_health(), "migration": migration})

    async def _migration_request(self, body: bytes) -> tuple[int, str, bytes]:
        """A shim's request on the node API socket, answered by the migration controller."""
        assert self.controller is not None  # the socket is only served with a controller
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("the request must be a JSON object")
            answer = await self.controller.node_api(request)
        except ValueError as exc:
            return 400, "text/plain", f"bad request: {exc}\n".encode()
        return json_body(dict(answer))

    async def _status(self) -> tuple[int, str, bytes]:
        await self.node.refresh()
        return json_body({"containers": [asdict(c) | {"samples": None}
                                         for c in self.node.containers()]})

    async def housekeeping(self) -> None:
        """Let plugins clean up after dead containers, once the view of the node is fresh."""
        await self.node.refresh()
        snapshot = NodeSnapshot(tuple(self.node.containers()))
        for impl in reversed(self.pm.hook.zeropod_node_housekeeping.get_hookimpls()):
            try:
                await asyncio.to_thread(impl.function, node=snapshot)
            except Exception:
                log.exception("plugin hook failed", extra={
                    "hook": "zeropod_node_housekeeping", "plugin": impl.plugin_name})

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.housekeeping_s)
            await self.housekeeping()

    async def run(self, host: str, port: int, ready_file: str | None = None) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.node.start()
        address = await self.http.start(host, port)
        log.info("manager serving", extra={"http": f"{address[0]}:{address[1]}",
                                           "socket_dir": self.node.socket_dir})
        if ready_file:
            _write_atomically(ready_file, f"{address[0]}:{address[1]}\n")
        housekeeping = loop.create_task(self._housekeeping_loop(), name="housekeeping")
        migration = None
        if self.migration is not None:
            migration = loop.create_task(self.migration.serve(), name="migration-service")
            migration.add_done_callback(_log_service_end)
        controller = None
        if self.controller is not None:
            await self.node_api.start_unix(self.node_api_socket)
            controller = loop.create_task(self.controller.run(), name="migration-controller")
            controller.add_done_callback(_log_service_end)
            log.info("migration controller running", extra={"node_api": self.node_api_socket})
        await stop.wait()
        log.info("manager stopping")
        housekeeping.cancel()
        if self.pods is not None:
            await self.pods.close()
        for task in (controller, migration):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if controller is not None:
            await self.node_api.close()
            with contextlib.suppress(OSError):
                os.unlink(self.node_api_socket)
        await self.http.close()
        await self.node.close()
        return 0


def _log_service_end(task: asyncio.Task[None]) -> None:
    """The migration service or controller ended before the manager did: say why (the
    manager runs on)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zeropod-manager",
        description="The per-node zeropod manager: connects to every zeropod shim on this "
                    "node, merges their metrics and status, and serves /metrics, /healthz "
                    "and /status over HTTP. Runs until SIGTERM or SIGINT; logs are JSON "
                    "lines on stderr.",
        epilog="Each option can also be set through the environment variable named in its "
               "help. Plugins of the group zeropod.manager are loaded at start "
               "(see `zeropod plugins --role manager`).")
    parser.add_argument("--socket-dir", metavar="DIR",
                        default=os.environ.get("ZEROPOD_SOCKET_DIR", "/run/zeropod/s"),
                        help="folder where the shims' node API sockets appear "
                             "(ZEROPOD_SOCKET_DIR; default: %(default)s)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        default=os.environ.get("ZEROPOD_MANAGER_LISTEN", "127.0.0.1:8080"),
                        help="address of the HTTP endpoints; port 0 picks a free one "
                             "(ZEROPOD_MANAGER_LISTEN; default: %(default)s)")
    parser.add_argument("--ready-file", metavar="FILE",
                        help="write the address actually listened on to FILE once serving")
    parser.add_argument("--housekeeping-interval", metavar="SECONDS", type=float,
                        default=float(os.environ.get("ZEROPOD_HOUSEKEEPING_INTERVAL",
                                                     HOUSEKEEPING_INTERVAL_S)),
                        help="how often plugins clean up after containers that are gone, "
                             "e.g. orphaned checkpoint images (ZEROPOD_HOUSEKEEPING_INTERVAL; "
                             "default: %(default)s)")
    try:
        kube_env = KubeSettings.from_env(os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    kube = parser.add_argument_group(
        "Kubernetes", "A DaemonSet pod uses its service account and NODE_NAME (downward "
        "API); elsewhere give --kubeconfig and --node-name. The API is only used when one "
        "of the switches is on.")
    kube.add_argument("--kubeconfig", metavar="PATH", default=kube_env.kubeconfig,
                      help="kubeconfig to reach the API outside a cluster "
                           "(ZEROPOD_KUBECONFIG; default: the in-cluster service account)")
    kube.add_argument("--node-name", metavar="NAME", default=kube_env.node_name,
                      help="this node's name (NODE_NAME; default: the host name)")
    for flag, env, default, what in (
            ("--status-labels", "ZEROPOD_STATUS_LABELS", kube_env.status_labels,
             "label pods status.zeropod.ctrox.dev/<container>=RUNNING|SCALED_DOWN"),
            ("--status-events", "ZEROPOD_STATUS_EVENTS", kube_env.status_events,
             "create Kubernetes events for restores, scale-downs and failures"),
            ("--in-place-scaling", "ZEROPOD_IN_PLACE_SCALING", kube_env.in_place_scaling,
             "shrink a sleeping container's requests to 1m CPU / 1Ki memory in place"),
            ("--migration-controller", "ZEROPOD_MIGRATION_CONTROLLER", kube_env.migration,
             "migrate sleeping containers of deleted Deployment pods through Migration "
             "objects (needs zeropod-migration)")):
        kube.add_argument(flag, nargs="?", const=True, default=default, type=parse_switch,
                          metavar="BOOL", help=f"{what} ({env}; default: %(default)s)")
    parser.add_argument("--node-api-socket", metavar="PATH",
                        default=os.environ.get("ZEROPOD_MANAGER_SOCKET", ""),
                        help="unix socket where the shims ask the manager (served with the "
                             "migration controller) (ZEROPOD_MANAGER_SOCKET; default: "
                             "manager.sock next to the socket folder)")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    args = parser.parse_args(argv)
    logs.set_context(component="manager", pid=os.getpid())
    logs.configure(sys.stderr, level=logging.DEBUG if args.debug else logging.INFO)
    host, _, port = args.listen.rpartition(":")
    manager = Manager(args.socket_dir, make_plugin_manager(RoleName.MANAGER),
                      housekeeping_s=args.housekeeping_interval,
                      kube_settings=KubeSettings(
                          kubeconfig=args.kubeconfig, node_name=args.node_name,
                          status_labels=args.status_labels, status_events=args.status_events,
                          in_place_scaling=args.in_place_scaling,
                          migration=args.migration_controller),
                      node_api_socket=args.node_api_socket)
    manager.setup()
    return asyncio.run(manager.run(host or "127.0.0.1", int(port), args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
