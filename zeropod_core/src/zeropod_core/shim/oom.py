"""OOM notifications for a container (cgroup v1 memory controller, as on these machines).

The kernel signals an eventfd registered through ``cgroup.event_control`` on every OOM in the
cgroup, and also when the cgroup is removed; an event while the cgroup still exists is an OOM
(as containerd decides). The ``oom_kill`` counter cannot tell them apart: the notification
comes before the kill is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

log = logging.getLogger("zeropod.shim.oom")
MEMORY_ROOT = "/sys/fs/cgroup/memory"


def memory_cgroup(pid: int) -> str | None:
    """The v1 memory cgroup folder of ``pid``, or None (cgroup v2, or no memory controller)."""
    try:
        with open(f"/proc/{pid}/cgroup") as lines:
            for line in lines:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    folder = MEMORY_ROOT + path
                    return folder if os.path.isdir(folder) else None
    except OSError:
        return None
    return None


class OomWatcher:
    """Calls ``on_oom`` whenever the kernel OOM-kills a process in the container's cgroup."""

    def __init__(self, loop: asyncio.AbstractEventLoop, folder: str,
                 on_oom: Callable[[], None]) -> None:
        self._loop, self._folder, self._on_oom = loop, folder, on_oom
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        control = os.open(os.path.join(folder, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(os.path.join(folder, "cgroup.event_control"), "w") as event_control:
                event_control.write(f"{self._efd} {control}")
        finally:
            os.close(control)
        loop.add_reader(self._efd, self._on_event)

    @classmethod
    def for_pid(cls, loop: asyncio.AbstractEventLoop, pid: int,
                on_oom: Callable[[], None]) -> OomWatcher | None:
        folder = memory_cgroup(pid)
        if folder is None:
            return None
        try:
            return cls(loop, folder, on_oom)
        except OSError as exc:
            log.warning("no OOM notifications", extra={"cgroup": folder, "error": str(exc)})
            return None

    def _on_event(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        if not os.path.isdir(self._folder):
            self.close()  # the cgroup was removed
            return
        self._on_oom()

    def close(self) -> None:
        if self._efd >= 0:
            self._loop.remove_reader(self._efd)
            os.close(self._efd)
            self._efd = -1
