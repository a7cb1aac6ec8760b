"""The long-lived shim server: ttrpc on the socket ``start`` created, until Shutdown.

Logs go to the bundle's ``log`` FIFO, one JSON object per line with the container id, which is
where containerd expects a shim's output (it copies it into its own log). The FIFO is opened
read-write and non-blocking: opening never waits for containerd and a full FIFO drops lines
instead of stalling the shim.
"""

from __future__ import annotations

import sys

# The shim never speaks TLS; without this, asyncio imports ssl and maps OpenSSL into every
# pod's shim (about 4 MB of RSS). asyncio handles a missing ssl module by itself.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

from zeropod_core import logs, ttrpc  # noqa: E402
from zeropod_core.api import TASK_SERVICE, task  # noqa: E402
from zeropod_core.hooks import ShimHooks  # noqa: E402
from zeropod_core.model import RoleName  # noqa: E402
from zeropod_core.plugins import make_plugin_manager  # noqa: E402

from .events import EventPublisher  # noqa: E402
from .flags import ShimFlags  # noqa: E402
from .node_api import NodeApi, NodeService  # noqa: E402
from .reaper import Reaper, become_subreaper  # noqa: E402
from .task_service import ShimConfig, TaskService  # noqa: E402

log = logging.getLogger("zeropod.shim")


class _FifoStream(io.StringIO):
    """A text stream over a non-blocking FIFO fd that drops what does not fit."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text: str) -> int:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.fd, text.encode())
        return len(text)


def _setup_logging(bundle: Path, flags: ShimFlags) -> None:
    try:
        fd = os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 2)  # tracebacks of a crash land in containerd's log too
    logs.set_context(id=flags.id, namespace=flags.namespace, shim_pid=os.getpid())
    logs.configure(_FifoStream(fd), level=logging.DEBUG if flags.debug else logging.INFO)


_hooks: ShimHooks | None = None


def prepare() -> ShimHooks:
    """Load the ``zeropod.shim`` plugins (once per process; a template does it before forking).

    A plugin that fails to load is reported unavailable in the log and the shim goes on.
    """
    global _hooks
    if _hooks is None:
        pm = make_plugin_manager(RoleName.SHIM)
        settings = {k: v for k, v in os.environ.items() if k.startswith("ZEROPOD_")}
        pm.hook.zeropod_configure.call_historic(kwargs={"settings": settings})
        _hooks = ShimHooks(pm)
        _hooks.annotations()
    return _hooks


async def serve(flags: ShimFlags, listen_socket: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    become_subreaper()
    reaper = Reaper()
    reaper.install(loop)
    publisher = EventPublisher(os.environ.get("TTRPC_ADDRESS", flags.address + ".ttrpc"),
                               flags.namespace)
    publisher.start()
    stop = asyncio.Event()
    config = ShimConfig(flags.namespace, flags.address,
                        os.environ.get("TTRPC_ADDRESS", ""), flags.socket)
    hooks = prepare()
    for record in hooks.pm.records:
        log.info("plugin", extra={"plugin": record.name, "status": record.status,
                                  "reason": record.reason})
    service = TaskService(config, reaper, publisher, hooks, on_shutdown=stop.set)
    server = ttrpc.Server()
    server.register(TASK_SERVICE, ttrpc.service_methods(
        task.DESCRIPTOR.services_by_name["Task"], service))
    listener = await asyncio.start_unix_server(server.serve_connection, sock=listen_socket)
    node_api = NodeApi(NodeService(lambda: service.containers, hooks), flags.socket)
    try:
        await node_api.start()
    except OSError as exc:
        log.error("node API unavailable: the manager will not see this shim",
                  extra={"socket": node_api.path, "error": str(exc)})
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    log.info("shim serving", extra={"socket": flags.socket})
    await stop.wait()
    log.info("shim shutting down")
    await publisher.flush(timeout=5)
    listener.close()
    await node_api.close()
    await server.shutdown(grace=1)
    await publisher.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(flags.socket)
    return 0


def run(flags: ShimFlags, listen_socket: socket.socket) -> int:
    """Serve on ``listen_socket`` until containerd shuts the shim down."""
    _setup_logging(Path.cwd(), flags)
    log.debug("shim starting")
    return asyncio.run(serve(flags, listen_socket))

