"""One ``criu swrk`` process: CRIU's RPC over a socket pair, without runc in between.

runc itself talks to CRIU this way (``criu swrk 3``, the socket on fd 3); doing it from the
shim saves runc's ~25-30 ms per restore (Go start-up, a second CRIU exec for a version check,
moving CRIU into ten cgroups on the critical path, rewriting its state). The process can be
started long before the request is sent, so a wake-up pays neither the exec nor the first
cgroup migration (5-11 ms on this kernel): :func:`spawn_swrk` starts it with the descriptors
it must inherit (stdio pipes, the pod's network namespace) and :meth:`Swrk.join_cgroups` moves
it into the container's cgroups ahead of time.

The process is spawned with ``posix_spawn`` and never waited for here: in the shim the reaper
is the only one that may ``waitpid`` (it reaps it as an unclaimed child); a ``pidfd`` taken
right after the spawn tells whether it still runs. Messages are single SEQPACKET datagrams of
the protobuf ``criu_req``/``criu_resp`` from :mod:`._pb.criu_rpc_pb2` (imported on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from zeropod_core.netns import run_in_netns

if TYPE_CHECKING:
    from ._pb import criu_rpc_pb2 as rpc

log = logging.getLogger("zeropod.criu.swrk")

SWRK_FD = 3
_RECV_BYTES = 1 << 20
# Fds above this are scratch copies while the child's descriptor table is built.
_SCRATCH_FD = 100
_RESET_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                       if hasattr(signal, name))


class SwrkError(RuntimeError):
    """The swrk process failed to start, died, or answered with an error."""


def spawn_process(argv: list[str], fds: Mapping[int, int], *,
                  own_group: bool = False) -> tuple[int, int]:
    """``posix_spawn`` ``argv`` with ``fds`` (child fd -> our fd) as its only open fds.

    Returns ``(pid, pidfd)``; ``own_group`` makes it lead a new process group (killed with
    its children by ``killpg``). Slots 0-2 not in ``fds`` get ``/dev/null``. Every fd is first
    copied above :data:`_SCRATCH_FD` so a ``dup2`` never targets a descriptor that is still a
    source (and never is a no-op that would keep ``O_CLOEXEC``).
    """
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    wanted = {0: devnull, 1: devnull, 2: devnull, **fds}
    scratch = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _SCRATCH_FD)
               for target, fd in wanted.items()}
    try:
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in scratch.items()]
        if own_group:
            pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions,
                                 setsigdef=_RESET_SIGNALS, setsigmask=(), setpgroup=0)
        else:
            pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions,
                                 setsigdef=_RESET_SIGNALS, setsigmask=())
        # No await between spawn and pidfd_open: the reaper (a loop callback) cannot have
        # collected the child yet, so the pid is still this child's.
        pidfd = os.pidfd_open(pid)
    finally:
        for fd in (devnull, *scratch.values()):
            os.close(fd)
    return pid, pidfd


def pidfd_exited(pidfd: int) -> bool:
    """True once the process behind ``pidfd`` has exited (a pidfd polls readable then)."""
    return bool(select.select([pidfd], [], [], 0)[0])


class Swrk:
    """A started ``criu swrk``: send requests, read the answer, kill it, close it."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket) -> None:
        self.pid, self.pidfd, self.sock = pid, pidfd, sock

    @classmethod
    def spawn(cls, criu: str, *, stdio: tuple[int, int, int] | None = None,
              extra: Mapping[int, int] | None = None, netns: str | None = None) -> Swrk:
        """Start ``criu swrk 3`` with ``stdio`` on 0-2 and ``extra`` (child fd -> our fd),
        in the network namespace at ``netns`` if given (spawned from a thread that joined
        it: the shim stays where it is; see :func:`.direct.dump` for why)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = {SWRK_FD: theirs.fileno(), **(extra or {})}
        if stdio is not None:
            fds.update(enumerate(stdio))
        argv = [criu, "swrk", str(SWRK_FD)]
        try:
            if netns is None:
                pid, pidfd = spawn_process(argv, fds)
            else:
                pid, pidfd = run_in_netns(netns, lambda: spawn_process(argv, fds))
        except OSError as exc:
            ours.close()
            raise SwrkError(f"cannot start {criu} swrk: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(pid, pidfd, ours)

    def join_cgroups(self, directories: Iterable[Path]) -> None:
        """Move the process into each cgroup directory (the restored task inherits them)."""
        for directory in directories:
            try:
                (directory / "cgroup.procs").write_text(str(self.pid))
            except OSError as exc:
                raise SwrkError(f"cannot move criu swrk {self.pid} into {directory}: "
                                f"{exc}") from exc

    @property
    def alive(self) -> bool:
        return not pidfd_exited(self.pidfd)

    async def call(self, request: rpc.criu_req) -> rpc.criu_resp:
        """Send ``request`` and return CRIU's answer to it.

        Notifications (only sent when ``notify_scripts`` is set) are acknowledged and skipped.
        A closed socket (CRIU crashed) raises :class:`SwrkError`.
        """
        msgs = messages()
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, request.SerializeToString())
        while True:
            data = await loop.sock_recv(self.sock, _RECV_BYTES)
            if not data:
                raise SwrkError(f"criu swrk {self.pid} closed the connection (it crashed or "
                                "was killed; see its log)")
            response: rpc.criu_resp = msgs.criu_resp()
            response.ParseFromString(data)
            if response.type != msgs.NOTIFY:
                return response
            ack = msgs.criu_req(type=msgs.NOTIFY, notify_success=True)
            await loop.sock_sendall(self.sock, ack.SerializeToString())

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        """Close our ends; a swrk still waiting for a request exits on the EOF."""
        self.sock.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.pidfd = -1


def messages() -> ModuleType:
    """CRIU's RPC messages, imported on first use: the shim imports this plugin at start,
    and nothing of protobuf should be paid for before the first checkpoint."""
    from ._pb import criu_rpc_pb2
    return criu_rpc_pb2


def response_error(response: rpc.criu_resp) -> str:
    """CRIU's error of a failed response, as one line."""
    parts = [f"errno {response.cr_errno}" if response.cr_errno else "",
             response.cr_errmsg.strip() if response.HasField("cr_errmsg") else ""]
    return ": ".join(p for p in parts if p) or "no error given"
