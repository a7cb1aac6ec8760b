"""Lazy restore: a ``criu lazy-pages`` daemon serves the app's memory from the local image.

An eager restore copies every page before the app runs (~0.5 ms per MiB here: 1 GiB is over
half a second). With ``lazy_pages`` CRIU restores everything but the anonymous private
memory, the app runs at once, its page faults are answered over userfaultfd by this daemon,
which also pushes the remaining pages in the background and exits when all are in.

The daemon is started with the restore's swrk, right after the dump (``--status-fd`` tells
when its socket ``<work>/lazy-pages.socket`` is ready). Its exit status is what decides
whether the app's memory is complete, and the shim's reaper is the only one that may
``waitpid``: so it runs under a small ``sh`` that writes ``$?`` to ``lazy-pages.status``,
and a pidfd says when that ``sh`` is gone.

What if it fails: while the restore runs, CRIU's restore fails too (and the checkpointer
retries eagerly through runc from the same images). After the restore, a daemon that dies or
cannot read the image (status not 0, or no status at all) leaves pages the kernel would fill
with **zeros** once the userfaultfd is closed; the app must not go on like that, so the
checkpointer kills the container's processes (the core then sees the container exit) and
keeps the images for inspection. The images are removed only after a status of 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

from .swrk import pidfd_exited, spawn_process

STATUS_FILE = "lazy-pages.status"
SOCKET_NAME = "lazy-pages.socket"
_STATUS_FD = 3


def image_pages_bytes(images: Path) -> int:
    """Bytes of memory pages in a dump (the ``pages-*.img`` files)."""
    return sum(p.stat().st_size for p in images.glob("pages-*.img"))


@dataclass
class LazyDaemon:
    """A started ``criu lazy-pages`` (under its ``sh``) for one restore."""

    pid: int
    pidfd: int
    ready_fd: int
    work: Path
    _ready: bool = False

    @classmethod
    def spawn(cls, criu: str, images: Path, work: Path, log_level: int, *,
              page_server: tuple[str, int] | None = None) -> LazyDaemon:
        """``page_server``: fetch the pages from that page server (a live migration's
        source, through the page-server proxy) instead of the local image."""
        (work / STATUS_FILE).unlink(missing_ok=True)
        (work / SOCKET_NAME).unlink(missing_ok=True)
        remote = (f"--page-server --address {shlex.quote(page_server[0])} "
                  f"--port {int(page_server[1])} " if page_server else "")
        command = (f"{shlex.quote(criu)} lazy-pages {remote}"
                   f"--images-dir {shlex.quote(str(images))} "
                   f"--work-dir {shlex.quote(str(work))} --log-file lazy-pages.log "
                   f"-v{log_level} --status-fd {_STATUS_FD}; "
                   f"echo $? > {shlex.quote(str(work / STATUS_FILE))}")
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid, pidfd = spawn_process(["/bin/sh", "-c", command], {_STATUS_FD: ready_w},
                                       own_group=True)
        except OSError:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        return cls(pid, pidfd, ready_r, work)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Whether the daemon listens (its status byte arrived) within ``timeout_s``."""
        if self._ready:
            return True
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(bool(os.read(self.ready_fd, 1)))

        loop.add_reader(self.ready_fd, on_readable)
        try:
            async with asyncio.timeout(timeout_s):
                self._ready = await ready
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(self.ready_fd)
        return self._ready

    async def wait_exit(self) -> int | None:
        """Wait until the daemon's ``sh`` has exited; its status, None when unknown (killed)."""
        if not pidfd_exited(self.pidfd):
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()

            def on_exit() -> None:
                if not gone.done():
                    gone.set_result(None)

            loop.add_reader(self.pidfd, on_exit)
            try:
                await gone
            finally:
                loop.remove_reader(self.pidfd)
        try:
            return int((self.work / STATUS_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        return self.pidfd >= 0 and not pidfd_exited(self.pidfd)

    def kill(self) -> None:
        """Kill the daemon and its ``sh`` (one process group): no status 0 is written."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        for fd in (self.ready_fd, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.ready_fd = self.pidfd = -1
