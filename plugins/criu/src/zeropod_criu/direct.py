"""Dump and restore through CRIU's RPC, without runc (the ``direct`` mode).

**Dump**: the container's cgroup is already frozen (:mod:`.freezer`), so CRIU's freezer loop
finds it FROZEN and never sleeps its 100 ms; the request carries runc 1.1's dump options
(:mod:`.runcstate`), and ``descriptors.json`` (the init's stdio, which a ``runc restore``
fallback needs) is written next to the images. runc's state and the cgroups stay as they are.

**Restore** is split in two. :func:`prepare_restore`, right after the dump, starts the
``criu swrk`` that will restore the container: with the new stdio pipes on 0-2, the pod's
network namespace on fd 4, moved into every cgroup of the container (the restored task
inherits them: ``manage-cgroups=ignore``). :meth:`PreparedRestore.restore`, at wake-up,
bind-mounts the root file system where CRIU wants it (``<runc state>/criu-root``, as runc
does; never while asleep: removing the state directory would delete the root file system
through the mount), sends the request, waits for the answer, unmounts, and rewrites runc's
``state.json`` for the new PID.

Failures raise :class:`DirectError`; the checkpointer then restores through runc (from the same
images), so a CRIU or runc version this module does not know degrades to the slower path.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zeropod_core.netns import CLONE_NEWNET

if TYPE_CHECKING:
    from ._pb import criu_rpc_pb2 as rpc
from .lazy import LazyDaemon
from .runcstate import Mount, RuncState
from .swrk import Swrk, SwrkError, messages, response_error

log = logging.getLogger("zeropod.criu.direct")

NETNS_FD = 4
# How long a restore waits for a pre-spawned lazy-pages daemon to listen before going eager.
LAZY_READY_S = 2.0
MS_BIND, MS_REC, MNT_DETACH = 0x1000, 0x4000, 0x2
_libc = ctypes.CDLL(None, use_errno=True)


class DirectError(RuntimeError):
    """The direct dump or restore failed (message: CRIU's error, or why it did not start)."""


@dataclass(frozen=True)
class DumpOptions:
    """Per-dump choices the checkpointer makes."""

    criu: str
    images: Path
    work: Path
    freezer_dir: Path | None
    file_locks: bool
    ext_unix_sk: bool
    log_level: int = 4


async def call(swrk: Swrk, request: rpc.criu_req, images: Path, work: Path,
                state: RuncState, log_file: str, log_level: int, file_locks: bool,
                ext_unix_sk: bool, *, config_file: str | None = None) -> rpc.criu_resp:
    """Fill the options both requests share and send ``request``; ``config_file``: CRIU's
    configuration file instead of the container's (``org.criu.config``).

    CRIU resolves ``work_dir_fd`` as ``/proc/<peer>/fd/N`` of *our* process (the socket
    pair's creator), so the directory is opened here and kept open until the answer.
    """
    opts = request.opts
    opts.images_dir_fd = -1
    opts.images_dir = str(images)
    opts.log_file = log_file
    opts.log_level = log_level
    opts.manage_cgroups = True
    opts.notify_scripts = False
    opts.file_locks = file_locks
    opts.ext_unix_sk = ext_unix_sk
    config = config_file or state.criu_config
    if config:
        opts.config_file = config
    work_fd = os.open(work, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        opts.work_dir_fd = work_fd
        return await swrk.call(request)
    finally:
        os.close(work_fd)


def write_descriptors(images: Path, pid: int) -> None:
    """``descriptors.json`` as runc writes it: what fds 0-2 of the dumped init were."""
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in range(3)]
    target = images / "descriptors.json"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(fds).encode())
    finally:
        os.close(fd)


def dump_request(state: RuncState, pid: int, options: DumpOptions, mounts: DumpMounts, *,
                 in_pod_netns: bool = True) -> rpc.criu_req:
    """The DUMP request of ``pid`` (also the base of a lazy dump, see .live).

    ``in_pod_netns``: CRIU runs in the network namespace the spec names by path (the pod's,
    see :func:`dump`); otherwise that namespace is declared external, as runc does (a lazy
    dump's page server must listen where the node's manager can reach it).
    """
    msgs = messages()
    request: rpc.criu_req = msgs.criu_req(type=msgs.DUMP)
    opts = request.opts
    opts.pid = pid
    opts.root = state.rootfs
    if options.freezer_dir is not None:
        opts.freeze_cgroup = str(options.freezer_dir)
    netns = state.netns_path
    if netns and not in_pod_netns:
        opts.external.append(f"net[{os.stat(netns).st_ino}]:extRootNetNS")
    for mount in mounts.external:
        opts.ext_mnt.add(key=mount.key, val=mount.val)
    return request


async def dump(state: RuncState, pid: int, options: DumpOptions,
               swrk: Swrk | None = None, *, mounts: DumpMounts | None = None,
               ) -> list[tuple[str, Path]]:
    """Dump ``pid`` (the container's init) into ``options.images``; CRIU kills it.

    ``swrk``: a ``criu swrk`` started ahead of time in the pod's network namespace (it is used
    up either way); without one, or if it died, one is started now.

    CRIU runs in the network namespace the spec names by path (the pod's), so the image holds
    no network namespace: its restore must join one (:attr:`PreparedRestore.netns_joined`).
    That makes the dump much faster: CRIU dumps every network namespace it does not run in,
    external or not, including its conntrack table, and the kernel answers that by walking
    every bucket of the host-wide hash table (262144 here): 45-65 ms of a ~95 ms dump on a
    busy machine.

    Returns the cgroup binds found in the container (the restore needs them and they cannot be
    read once the process is gone). Raises :class:`DirectError` on failure (CRIU has then left
    the process running, frozen as it was).
    """
    mounts = mounts or DumpMounts.read(state, pid)
    write_descriptors(options.images, pid)
    request = dump_request(state, pid, options, mounts)
    if swrk is None or not swrk.alive:
        if swrk is not None:
            swrk.close()
        try:
            swrk = Swrk.spawn(options.criu, netns=state.netns_path)
        except (SwrkError, OSError) as exc:
            raise DirectError(str(exc)) from exc
    try:
        response = await call(swrk, request, options.images, options.work, state, "dump.log",
                              options.log_level, options.file_locks, options.ext_unix_sk)
    except (SwrkError, OSError) as exc:
        swrk.kill()
        raise DirectError(f"criu dump: {exc}") from exc
    finally:
        swrk.close()
    if not response.success:
        raise DirectError(f"criu dump failed: {response_error(response)}")
    return mounts.cgroup_binds


@dataclass(frozen=True)
class DumpMounts:
    """The container's mounts a dump must know, read once per dump (each read parses
    ``mountinfo`` of the shim and of the container)."""

    cgroup_binds: list[tuple[str, Path]]
    external: list[Mount]

    @classmethod
    def read(cls, state: RuncState, pid: int) -> DumpMounts:
        binds = state.cgroup_binds(pid)
        return cls(binds, state.dump_mounts(pid, binds))


@dataclass
class PreparedRestore:
    """A ``criu swrk`` waiting to restore one container, and what it holds."""

    state: RuncState
    swrk: Swrk
    stdio: Sequence[int]
    criu_root: Path
    images: Path
    work: Path
    restore_mounts: list[tuple[str, str]]
    has_netns: bool
    # the pod's network namespace to join, for an image dumped inside it (.netns)
    netns_joined: str | None = None
    # runc's state without the fields the restore changes, serialised ahead of time
    state_head: bytes | None = None
    lazy: LazyDaemon | None = None
    # the lazy daemon after a successful lazy restore: it serves the app, the caller owns it
    serving: LazyDaemon | None = None
    # time.monotonic() of the restore's steps: request sent, answer read, state.json written
    timings: dict[str, float] = field(default_factory=dict)
    _closed: bool = field(default=False, repr=False)

    async def restore(self, *, file_locks: bool, ext_unix_sk: bool, log_level: int = 4) -> int:
        """Send the RESTORE request; returns the restored init's host PID.

        With a lazy daemon that is ready, the restore is lazy and :attr:`serving` is set
        afterwards (the caller waits for it before the images go). The swrk is used up either
        way; on failure nothing of the container runs (CRIU kills what it had restored) and
        :class:`DirectError` is raised.
        """
        msgs = messages()
        request: rpc.criu_req = msgs.criu_req(type=msgs.RESTORE)
        opts = request.opts
        lazy = self.lazy is not None and await self.lazy.wait_ready(LAZY_READY_S)
        if self.lazy is not None and not lazy:
            log.warning("the lazy-pages daemon is not ready, restoring eagerly",
                        extra={"work": str(self.work)})
        opts.root = str(self.criu_root)
        opts.rst_sibling = True
        opts.evasive_devices = True
        opts.lazy_pages = lazy
        if self.netns_joined:
            opts.join_ns.add(ns="net", ns_file=self.netns_joined)
        elif self.has_netns:
            opts.empty_ns = CLONE_NEWNET
            opts.inherit_fd.add(key="extRootNetNS", fd=NETNS_FD)
        for index, name in enumerate(_descriptors(self.images)):
            if name.startswith("pipe:"):
                opts.inherit_fd.add(key=name, fd=index)
        for key, val in self.restore_mounts:
            opts.ext_mnt.add(key=key, val=val)
        try:
            # Only now, and only until the answer: ``runc delete`` (and any rmtree of the
            # state directory) would otherwise delete the root file system through it.
            _bind(self.state.rootfs, self.criu_root)
            self.timings["request"] = time.monotonic()
            response = await call(self.swrk, request, self.images, self.work, self.state,
                                   "restore.log", log_level, file_locks, ext_unix_sk)
            self.timings["answer"] = time.monotonic()
            if response.success and lazy:  # it serves the app now: close() must spare it
                self.serving, self.lazy = self.lazy, None
        except (SwrkError, OSError) as exc:
            self.swrk.kill()
            raise DirectError(f"criu restore: {exc}") from exc
        finally:
            self.close()
        if not response.success:
            raise DirectError(f"criu restore failed: {response_error(response)}")
        pid = int(response.restore.pid)
        try:
            self.state.record_restored(pid, self.state_head)
            self.timings["state"] = time.monotonic()
        except OSError as exc:
            # The process runs; runc's view is stale (kill/exec would miss it). Say so loudly.
            log.error("restored, but runc's state could not be updated",
                      extra={"pid": pid, "state": str(self.state.path), "error": str(exc)})
        return pid

    def close(self) -> None:
        """Release everything (idempotent): the swrk (killed if it still waits), fds, mount."""
        if self._closed:
            return
        self._closed = True
        if self.lazy is not None:
            self.lazy.kill()
            self.lazy.close()
            self.lazy = None
        if self.swrk.alive:
            self.swrk.kill()
        self.swrk.close()
        for fd in self.stdio:
            with contextlib.suppress(OSError):
                os.close(fd)
        _umount(self.criu_root)


def kill_cgroup_members(directories: Sequence[Path], timeout_s: float = 5.0) -> None:
    """SIGKILL every process in the container's cgroups and wait until they are gone.

    Used after a failed direct restore: whatever CRIU had restored (or the swrk itself) must
    not survive half-way. Thaws a v1 freezer first, so frozen tasks can die.
    """
    for directory in directories:
        state = directory / "freezer.state"
        if state.exists():
            with contextlib.suppress(OSError):
                state.write_text("THAWED")
    deadline = time.monotonic() + timeout_s
    while True:
        pids: set[int] = set()
        for directory in directories:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            log.warning("processes survive in the container's cgroups",
                        extra={"pids": sorted(pids)})
            return
        time.sleep(0.005)


def _descriptors(images: Path) -> list[str]:
    try:
        names = json.loads((images / "descriptors.json").read_text())
    except (OSError, ValueError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def _bind(source: str, target: Path) -> None:
    target.mkdir(mode=0o700, exist_ok=True)
    if _libc.mount(os.fsencode(source), os.fsencode(target), None,
                   ctypes.c_ulong(MS_BIND | MS_REC), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind-mount {source} on {target}: {os.strerror(err)}")


def _umount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
        with contextlib.suppress(OSError):
            target.rmdir()


def prepare_restore(criu: str, state: RuncState, stdio: Sequence[int], images: Path,
                    work: Path, cgroup_binds: list[tuple[str, Path]], *,
                    netns_joined: bool = True, lazy: bool = False,
                    log_level: int = 4) -> PreparedRestore:
    """Start the swrk for the next restore of the container (see the module doc), and with
    ``lazy`` a ``criu lazy-pages`` daemon for it (see :mod:`.lazy`). ``netns_joined``: the
    image was dumped inside the pod's network namespace (:func:`dump` does that).

    ``stdio`` are the new pipes' process ends; the result owns (and eventually closes) them.
    Raises :class:`DirectError`; then nothing is left behind but ``stdio``, still open.
    """
    criu_root = state.path.parent / "criu-root"
    netns = state.netns_path
    netns_fd: int | None = None
    swrk: Swrk | None = None
    try:
        _umount(criu_root)  # a leftover of a shim that died during a restore
        extra = {}
        if netns and not netns_joined:
            netns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            extra[NETNS_FD] = netns_fd
        swrk = Swrk.spawn(criu, stdio=(stdio[0], stdio[1], stdio[2]), extra=extra)
        swrk.join_cgroups(state.cgroup_dirs)
    except (OSError, SwrkError) as exc:
        if swrk is not None:
            swrk.kill()
            swrk.close()
        raise DirectError(f"cannot prepare the restore: {exc}") from exc
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
    mounts = [(m.key, m.val) for m in state.restore_mounts(cgroup_binds)]
    prepared = PreparedRestore(state, swrk, list(stdio), criu_root, images, work, mounts,
                               has_netns=netns is not None,
                               netns_joined=netns if netns_joined else None,
                               state_head=state.unchanged_json())
    if lazy:
        try:
            prepared.lazy = LazyDaemon.spawn(criu, images, work, log_level)
        except OSError as exc:
            log.warning("cannot start the lazy-pages daemon, the restore will be eager",
                        extra={"error": str(exc)})
    return prepared
