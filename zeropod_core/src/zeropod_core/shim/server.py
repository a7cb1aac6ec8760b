"""The long-lived shim server: ttrpc on the socket ``start`` created, until Shutdown.

Logs go to the bundle's ``log`` FIFO, one JSON object per line with the container id, which is
where containerd expects a shim's output (it copies it into its own log). The FIFO is opened
read-write and non-blocking: opening never waits for containerd and a full FIFO drops lines
instead of stalling the shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import socket
from pathlib import Path

from zeropod_core import logs, ttrpc
from zeropod_core.api import TASK_SERVICE, task

from .events import EventPublisher
from .flags import ShimFlags
from .reaper import Reaper, become_subreaper
from .task_service import ShimConfig, TaskService

log = logging.getLogger("zeropod.shim")
LISTEN_FD = 3


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


async def serve(flags: ShimFlags) -> int:
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
    service = TaskService(config, reaper, publisher, on_shutdown=stop.set)
    server = ttrpc.Server()
    server.register(TASK_SERVICE, ttrpc.service_methods(
        task.DESCRIPTOR.services_by_name["Task"], service))
    listener = await asyncio.start_unix_server(
        server.serve_connection, sock=socket.socket(fileno=LISTEN_FD))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    log.info("shim serving", extra={"socket": flags.socket})
    await stop.wait()
    log.info("shim shutting down")
    await publisher.flush(timeout=5)
    listener.close()
    await server.shutdown(grace=1)
    await publisher.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(flags.socket)
    return 0


def run(flags: ShimFlags) -> int:
    _setup_logging(Path.cwd(), flags)
    return asyncio.run(serve(flags))
