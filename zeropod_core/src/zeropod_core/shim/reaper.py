"""The one place that reaps children: the shim is a child subreaper.

Every process the shim starts (runc, and through runc the containers' processes, which are
re-parented to the shim) is reaped here with ``waitpid(-1)`` on SIGCHLD. Nothing else may call
``wait``: a second reaper (asyncio's child watcher, ``subprocess.Popen.wait``) would steal exit
statuses. So processes are spawned with :meth:`Reaper.spawn` (``posix_spawn``), and an exit that
arrives before anyone asked for it (a container that dies while ``runc start`` is still
running) is kept until it is claimed, so no exit is ever lost.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..netns import run_in_netns

log = logging.getLogger("zeropod.shim.reaper")

PR_SET_CHILD_SUBREAPER = 36
_UNCLAIMED_TTL_S = 300.0
# Signals Python sets to SIG_IGN that a child must not inherit (subprocess' restore_signals).
_RESET_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if
                       hasattr(signal, name))


@dataclass(frozen=True)
class Exit:
    """How and when a process ended (``status`` is 128+signal for a killed process)."""

    pid: int
    status: int
    at: float  # time.time()


def exit_status(wait_status: int) -> int:
    """containerd's convention: the exit code, or 128 + the signal number that killed it."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def become_subreaper() -> None:
    """Adopt orphaned descendants (container processes whose runc parent exited)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


class Reaper:
    """Reaps children on SIGCHLD and hands each exit to exactly one consumer."""

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[Exit]] = {}
        self._watchers: dict[int, Callable[[Exit], None]] = {}
        self._unclaimed: dict[int, Exit] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reaping on ``loop`` (call once, from the loop's thread)."""
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()  # children that exited before the handler existed

    def spawn(self, argv: Sequence[str], *, stdin: int | None = None, stdout: int | None = None,
              stderr: int | None = None, env: Mapping[str, str] | None = None,
              own_group: bool = False, netns: str | None = None) -> int:
        """Start ``argv`` (looked up on PATH) with the given fds as its stdio; return its PID.

        A ``None`` stdio slot becomes ``/dev/null``. The child gets default signal handling;
        with ``own_group`` it leads a new process group (so it can be killed with its helpers).
        With ``netns`` it starts in that network namespace: spawned from a short thread that
        joined it (the loop thread, which reaps, waits for that thread meanwhile).
        """
        if netns is not None:
            return run_in_netns(netns, lambda: self.spawn(argv, stdin=stdin, stdout=stdout,
                                                          stderr=stderr, env=env,
                                                          own_group=own_group))
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, devnull if fd is None else fd, target)
                       for target, fd in enumerate((stdin, stdout, stderr))]
            environ = dict(env if env is not None else os.environ)
            if own_group:
                return os.posix_spawnp(argv[0], list(argv), environ, file_actions=actions,
                                       setsigdef=_RESET_SIGNALS, setsigmask=(), setpgroup=0)
            return os.posix_spawnp(argv[0], list(argv), environ, file_actions=actions,
                                   setsigdef=_RESET_SIGNALS, setsigmask=())
        finally:
            os.close(devnull)

    async def wait(self, pid: int) -> Exit:
        """Wait for ``pid`` (spawned by us or re-parented to us) to exit."""
        if pid in self._unclaimed:
            return self._unclaimed.pop(pid)
        assert self._loop is not None, "Reaper.install() was not called"
        future = self._waiters.get(pid)
        if future is None:
            future = self._waiters[pid] = self._loop.create_future()
        return await asyncio.shield(future)

    def watch(self, pid: int, callback: Callable[[Exit], None]) -> None:
        """Call ``callback`` when ``pid`` exits (immediately if it already has)."""
        if pid in self._unclaimed:
            callback(self._unclaimed.pop(pid))
            return
        self._watchers[pid] = callback

    def unwatch(self, pid: int) -> None:
        """Stop watching ``pid``; a later exit is kept as unclaimed (and eventually dropped)."""
        self._watchers.pop(pid, None)

    def reap(self) -> None:
        """Collect every exited child and dispatch it."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._dispatch(Exit(pid, exit_status(status), time.time()))
        self._prune()

    def _dispatch(self, exited: Exit) -> None:
        future = self._waiters.pop(exited.pid, None)
        if future is not None and not future.done():
            future.set_result(exited)
            return
        callback = self._watchers.pop(exited.pid, None)
        if callback is not None:
            try:
                callback(exited)
            except Exception:
                log.exception("exit callback failed", extra={"pid": exited.pid})
            return
        self._unclaimed[exited.pid] = exited

    def _prune(self) -> None:
        horizon = time.time() - _UNCLAIMED_TTL_S
        for pid in [p for p, e in self._unclaimed.items() if e.at < horizon]:
            del self._unclaimed[pid]
