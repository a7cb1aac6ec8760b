"""The CRIU checkpointer: ``runc checkpoint`` to disk, ``runc restore`` back.

All runc calls go through the shim's :class:`~zeropod_core.providers.RuntimeHandle`, which
spawns runc via the shim's reaper. What the core has to know:

* ``runc checkpoint`` **kills** the container's processes (no ``--leave-running``): the core
  sees the init's exit and must swallow it, and the dumped init must have been reaped before
  :meth:`CriuCheckpointer.restore` (CRIU fails with "Can't fork ...: File exists" otherwise;
  :meth:`~CriuCheckpointer.restore` waits a little for it).
* After a failed checkpoint the container is thawed and keeps running (verified, and said in
  the outcome's error when it is not).
* :meth:`~CriuCheckpointer.restore` runs ``runc restore --detach`` with fresh stdio pipes
  (:meth:`RuntimeHandle.new_stdio`); the restored init gets a new host PID, a child of the
  shim (the shim is a subreaper and runc asks CRIU for ``--restore-sibling``), which the core
  must watch from then on. On failure it raises :class:`CriuRestoreError` and keeps the
  images for inspection; the core then cold-starts the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from zeropod_core.model import ContainerInfo, Outcome
from zeropod_core.procfs import is_alive, process_start
from zeropod_core.providers import RestoredProcess, RuntimeHandle

from . import direct, dumprecord, eager, lazy, live, masked, runcstate, tmpfs
from .criuconf import CRIU_CONFIG_ANNOTATION, CriuConfig, write_config
from .criulog import TAIL_LINES, log_tail, read_stats
from .freezer import FreezeError, Freezer
from .node import find_criu
from .paths import ImagePaths, tree_size
from .settings import CriuSettings, wants_pre_dump
from .swrk import Swrk, SwrkError

log = logging.getLogger("zeropod.criu.checkpointer")

# How long restore() waits for the dumped init to be reaped before it tries anyway.
REAP_WAIT_S = 2.0
# How long after a wake-up the swrk of the next dump is started.
SPARE_DELAY_S = 0.5


class CriuRestoreError(RuntimeError):
    """``runc restore`` failed; the message carries runc's error and CRIU's log tail."""

    def __init__(self, message: str, *, runc_error: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.runc_error, self.log_tail = runc_error, log_tail


@dataclass(frozen=True)
class _Frozen:
    """How the container was frozen before the dump, so a failure can undo it."""

    method: str  # "cgroup-v1", "cgroup-v2", "runc-pause" or "none"
    seconds: float = 0.0
    freezer: Freezer | None = None


class CriuCheckpointer:
    """Checkpoints one container with ``runc checkpoint`` and restores it with ``runc restore``.

    :param container: the container (its id names the image directory).
    :param runtime: the shim's runc driver for it.
    :param config: the container's parsed annotations (``zeropod.ctrox.dev/pre-dump``).
    :param settings: process settings (default: from the environment).
    :param mem_track: whether CRIU can track memory changes (pre-dumps); None = unknown,
        which disables pre-dumps.
    """

    def __init__(self, container: ContainerInfo, runtime: RuntimeHandle,
                 config: Mapping[str, object], *, settings: CriuSettings | None = None,
                 mem_track: bool | None = None, criu: str | None = None) -> None:
        self.container, self.runtime = container, runtime
        self._criu = criu
        self.settings = settings or CriuSettings.from_environ()
        self.paths = ImagePaths(self.settings.image_root, container.id)
        requested = wants_pre_dump(config)
        self.pre_dump = requested and bool(mem_track)
        if requested and not self.pre_dump:
            log.info("pre-dump requested but not available, dumping in one step",
                     extra={"container": container.id})
        self._dumped: tuple[int, str | None] | None = None
        # the masked directories of the last dump, made external mounts (see .masked)
        self._masked: list[str] = []
        # structure-only tmpfs mounts of the last direct dump, recreated at restore (.tmpfs)
        self._tmpfs: list[tmpfs.Tmpfs] = []
        self._owns_config = (container.annotations.get(CRIU_CONFIG_ANNOTATION)
                             == str(self.paths.criu_config))
        # set by a direct dump: the restore goes through CRIU's RPC (see .direct)
        self._direct: _DirectImage | None = None
        # after a lazy restore: waits for the lazy-pages daemon (see .lazy)
        self._lazy_copy: asyncio.Task[None] | None = None
        # a live arrival's lazy-pages daemon, being started since Create (see .live)
        self._arrival_daemon: asyncio.Task[lazy.LazyDaemon | None] | None = None
        # after a direct restore: config reset, host-side tmpfs detached, images removed
        self._tidying: asyncio.Task[None] | None = None
        # the swrk of the next direct dump, started while the app runs (in its netns)
        self._spare: tuple[str | None, Swrk] | None = None
        self._sparing: asyncio.Task[None] | None = None

    # --- the container's CRIU configuration -----------------------------------------------

    def _write_config(self, externals: tuple[str, ...] = ()) -> None:
        if self._owns_config:
            write_config(self.paths.criu_config,
                         CriuConfig(network_lock=self.settings.network_lock,
                                    externals=externals))

    def _masked_dirs(self, pid: int) -> list[str]:
        """runc's masked directories in the container, if this container uses our config."""
        if not (self._owns_config and self.settings.masked_external):
            return []
        try:
            spec = json.loads((self.runtime.bundle / "config.json").read_text())
            dirs = masked.masked_tmpfs_dirs(pid, spec.get("linux", {}).get("maskedPaths", []))
            if dirs:
                masked.ensure_source(self._masked_source)
        except (OSError, ValueError) as exc:
            log.warning("masked directories stay tmpfs in the image",
                        extra={"container": self.container.id, "error": str(exc)})
            return []
        return dirs

    def _structural_tmpfs(self, pid: int, mounts: direct.DumpMounts) -> list[tmpfs.Tmpfs]:
        """The tmpfs mounts the direct dump leaves out (our config only; see .tmpfs)."""
        if not (self._owns_config and self.settings.tmpfs_external):
            return []
        masked_files = {m.key for m in mounts.external if m.val == "/dev/null"}
        try:
            return tmpfs.structural_tmpfs(pid, set(self._masked), masked_files)
        except OSError as exc:
            log.warning("tmpfs mounts stay in the image", extra={
                "container": self.container.id, "error": str(exc)})
            return []

    def _restore_externals(self) -> tuple[str, ...]:
        """The ``external`` options of the next restore (masked dirs, recreated tmpfs)."""
        return (masked.restore_externals(self._masked, self._masked_source) +
                tmpfs.restore_externals(self._tmpfs, self.paths.tmpfs))

    def _declare_dump_externals(self, pid: int, mounts: direct.DumpMounts) -> None:
        """Choose a direct (or lazy) dump's external mounts, masked directories and
        structure-only tmpfs, and write them into the container's CRIU config."""
        self._masked = self._masked_dirs(pid)
        self._tmpfs = self._structural_tmpfs(pid, mounts)
        self._write_config(masked.dump_externals(self._masked) +
                           tmpfs.dump_externals(self._tmpfs))

    def _direct_options(self, frozen: Freezer) -> direct.DumpOptions:
        """The options of a dump through CRIU's RPC of the cgroup ``frozen`` pre-froze."""
        return direct.DumpOptions(self.criu, self.paths.snapshot, self.paths.work,
                                  frozen.directory, self.settings.file_locks,
                                  self.settings.ext_unix_sk, self.settings.log_level)

    def _write_dump_record(self, *, netns_joined: bool) -> None:
        """What a restore of this image must declare (:mod:`.dumprecord`), next to it."""
        dumprecord.DumpRecord(netns_joined=netns_joined, masked=self._masked,
                              tmpfs=self._tmpfs).write(self.paths.snapshot)

    @property
    def _masked_source(self) -> Path:
        return self.settings.image_root / ".masked"

    # --- checkpoint ---------------------------------------------------------------------

    def _common_flags(self) -> list[str]:
        flags = []
        if self.settings.file_locks:
            flags.append("--file-locks")
        if self.settings.ext_unix_sk:
            flags.append("--ext-unix-sk")
        return flags

    async def _freeze(self, pid: int) -> _Frozen:
        """Freeze the container so CRIU skips its 100 ms freezer sleep (best effort)."""
        if not self.settings.prefreeze:
            return _Frozen("none")
        freezer = Freezer.for_pid(pid)
        if freezer is not None:
            try:
                seconds = await freezer.freeze()
            except FreezeError as exc:
                log.warning("cannot pre-freeze the container, CRIU freezes it itself",
                            extra={"container": self.container.id, "error": str(exc)})
                return _Frozen("none")
            return _Frozen(f"cgroup-{freezer.kind}", seconds, freezer)
        start = time.monotonic()
        result = await self.runtime.runc("pause", self.container.id)
        if result.returncode != 0:
            log.warning("cannot pre-freeze the container (no cgroup freezer, runc pause "
                        "failed), CRIU freezes it itself",
                        extra={"container": self.container.id, "error": result.error})
            return _Frozen("none")
        return _Frozen("runc-pause", time.monotonic() - start)

    async def _thaw(self, frozen: _Frozen) -> bool:
        """Undo :meth:`_freeze` after a failed dump; True if the cgroup is thawed."""
        if frozen.freezer is not None:
            return frozen.freezer.thaw()
        if frozen.method == "runc-pause":
            return (await self.runtime.runc("resume", self.container.id)).returncode == 0
        # Nothing frozen by us; CRIU thaws what it froze. Still make sure nothing stays frozen.
        freezer = Freezer.for_pid(self.runtime.init_pid)
        if freezer is None:
            return True
        try:
            if freezer.state() == "THAWED":
                return True
        except OSError:
            return False
        return freezer.thaw()

    async def _pre_dump(self) -> bool:
        """Copy the memory while the app runs; the final dump then writes only changed pages."""
        result = await self.runtime.runc(
            "checkpoint", "--pre-dump", "--image-path", str(self.paths.pre),
            "--work-path", str(self.paths.pre_work), *self._common_flags(), self.container.id,
            timeout_s=self.settings.timeout_s)
        if result.returncode != 0:
            log.warning("pre-dump failed, dumping in one step",
                        extra={"container": self.container.id, "error": result.error,
                               "log_tail": log_tail(self.paths.pre_work / "dump.log")})
            return False
        return True

    async def checkpoint(self) -> Outcome:
        await self._settle()
        await self._drop_direct()
        if self.settings.mode == "direct" and not self.pre_dump:
            state = self._direct_state()
            if isinstance(state, str):
                log.info("checkpointing through runc: %s", state,
                         extra={"container": self.container.id})
            else:
                outcome = await self._direct_checkpoint(state)
                if outcome is not None:
                    return outcome
        return await self._runc_checkpoint()

    async def _runc_checkpoint(self) -> Outcome:
        start = time.monotonic()
        cid = self.container.id
        pid = self.runtime.init_pid
        await asyncio.to_thread(self.paths.prepare_checkpoint, pre_dump=self.pre_dump)
        parent = self.pre_dump and await self._pre_dump()
        frozen = await self._freeze(pid)
        self._masked = self._masked_dirs(pid)
        self._tmpfs = []
        self._write_config(masked.dump_externals(self._masked))
        args = ["checkpoint", "--image-path", str(self.paths.snapshot),
                "--work-path", str(self.paths.work), *self._common_flags()]
        if parent:
            args += ["--parent-path", self.paths.parent_link]
        dumped_start = process_start(pid)
        result = await self.runtime.runc(*args, cid, timeout_s=self.settings.timeout_s)
        duration = time.monotonic() - start
        if result.returncode != 0:
            return await self._checkpoint_failed(result.error, frozen, pid, duration)
        self._dumped = (pid, dumped_start)
        self._write_dump_record(netns_joined=False)
        return self._checkpointed(pid, frozen, duration, "runc", pre_dump=parent)

    def _checkpointed(self, pid: int, frozen: _Frozen, duration: float, path: str, *,
                      pre_dump: bool = False,
                      phases_ms: dict[str, float] | None = None) -> Outcome:
        """The outcome of a successful dump (CRIU's stats), logged."""
        stats = read_stats([self.paths.work / "stats-dump", self.paths.snapshot / "stats-dump"])
        stats["prefreeze_us"] = round(frozen.seconds * 1e6)
        outcome = Outcome(ok=True, duration_s=duration, image_bytes=tree_size(self.paths.snapshot),
                          stats=stats)
        log.info("checkpointed", extra={
            "container": self.container.id, "pid": pid, "duration_ms": round(duration * 1e3, 1),
            "image_bytes": outcome.image_bytes, "freeze": frozen.method, "path": path,
            "pre_dump": pre_dump, "frozen_time_us": stats.get("frozen_time"),
            "pages_written": stats.get("pages_written"), "phases_ms": phases_ms or {}})
        return outcome

    async def _checkpoint_failed(self, error: str, frozen: _Frozen, pid: int,
                                 duration: float) -> Outcome:
        thawed = await self._thaw(frozen)
        running = is_alive(pid)
        tail = log_tail(self.paths.work / "dump.log", TAIL_LINES)
        # A partial image is useless and still holds process memory; the logs stay.
        await asyncio.to_thread(self.paths.remove_images)
        message = error or "runc checkpoint failed"
        if not (thawed and running):
            message += (f" (after the failed dump the container is "
                        f"{'not running' if not running else 'still frozen'})")
        log.warning("checkpoint failed, the container keeps running" if thawed and running
                    else "checkpoint failed and the container did not come back",
                    extra={"container": self.container.id, "error": error,
                           "log_tail": tail, "thawed": thawed, "running": running})
        return Outcome(ok=False, duration_s=duration, error=message, log_tail=tail)

    # --- restore ------------------------------------------------------------------------

    async def _wait_dumped_reaped(self) -> None:
        """Give the shim's reaper a moment to collect the dumped init (see module doc)."""
        if self._dumped is None:
            return
        pid, started = self._dumped
        deadline = time.monotonic() + REAP_WAIT_S
        while started is not None and process_start(pid) == started:
            if time.monotonic() > deadline:
                log.warning("the dumped process was not reaped; the restore may fail",
                            extra={"container": self.container.id, "pid": pid})
                return
            await asyncio.sleep(0.001)
        self._dumped = None

    async def restore(self) -> RestoredProcess:
        start = time.monotonic()
        cid = self.container.id
        if not self.paths.has_image():
            raise CriuRestoreError(f"no checkpoint image of {cid} in {self.paths.snapshot}")
        await self._wait_dumped_reaped()
        page_server = live.remote_page_server(self.paths.snapshot)
        daemon = await self._take_arrival_daemon()
        if page_server is not None:  # arrived live: the pages are still on the source
            return await live.restore_remote(self, page_server, start, daemon)
        if daemon is not None:
            daemon.kill()
            daemon.close()
        image, self._direct = self._direct, None
        if image is not None:
            restored = await self._direct_restore(image, start)
            if restored is not None:
                return restored
        return await self._runc_restore(start)

    async def _runc_restore(self, start: float, *, lazy_pages: bool = False) -> RestoredProcess:
        """``lazy_pages``: a lazy-pages daemon listens in the work dir (it owns the images
        until it exits, so they stay)."""
        cid = self.container.id
        self.paths.pid_file.unlink(missing_ok=True)
        netns = await self._adopt_dump_record()
        externals = self._restore_externals()
        if externals:
            self._write_config(externals)
        stdio = self.runtime.new_stdio()
        try:
            result = await self.runtime.runc(
                "restore", "--detach", "--image-path", str(self.paths.snapshot),
                "--work-path", str(self.paths.work), "--bundle", str(self.runtime.bundle),
                "--pid-file", str(self.paths.pid_file), *self._common_flags(),
                *(["--lazy-pages"] if lazy_pages else []), cid,
                stdio=stdio, timeout_s=self.settings.timeout_s, netns=netns)
        finally:
            stdio.close()
            if externals:
                self._write_config()  # a cold start after a failure must not see them
            self._tmpfs = []
            await asyncio.to_thread(tmpfs.unmount_all, self.paths.tmpfs)
        if result.returncode != 0:
            tail = log_tail(self.paths.work / "restore.log", TAIL_LINES)
            log.warning("restore failed, images kept", extra={
                "container": cid, "error": result.error, "log_tail": tail,
                "images": str(self.paths.snapshot)})
            raise CriuRestoreError(
                f"runc restore of {cid} failed: {result.error or 'no error logged'}\n"
                f"last {TAIL_LINES} lines of {self.paths.work / 'restore.log'}:\n{tail}",
                runc_error=result.error, log_tail=tail)
        pid = int(self.paths.pid_file.read_text().strip())
        duration = time.monotonic() - start
        stats = read_stats([self.paths.work / "stats-restore",
                            self.paths.snapshot / "stats-restore"])
        if not lazy_pages:
            await asyncio.to_thread(self.paths.remove_images)
        log.info("restored", extra={"container": cid, "pid": pid, "path": "runc",
                                    "lazy": lazy_pages,
                                    "duration_ms": round(duration * 1e3, 1),
                                    "restore_time_us": stats.get("restore_time")})
        return RestoredProcess(pid, Outcome(ok=True, duration_s=duration, stats=stats))

    async def _adopt_dump_record(self) -> str | None:
        """Take what a restore of the image on disk must declare from its dump record
        (:mod:`.dumprecord`): it may come from another checkpointer (another node, an earlier
        shim). Recreates its tmpfs mounts; returns the network namespace runc must restore
        from inside (the image was dumped there: CRIU restores into its own namespace, and
        runc's ``empty_ns`` rules out CRIU's ``join_ns``), if any."""
        try:
            record = dumprecord.DumpRecord.read(self.paths.snapshot)
            if record is None:
                return None
            self._masked, self._tmpfs = record.masked, record.tmpfs
            if record.masked:
                masked.ensure_source(self._masked_source)
            if record.tmpfs:
                await asyncio.to_thread(tmpfs.prepare, self.paths.tmpfs, record.tmpfs)
        except (dumprecord.RecordError, OSError) as exc:
            raise CriuRestoreError(f"cannot restore {self.container.id}: {exc}") from exc
        if not record.netns_joined:
            return None
        netns = self._spec_netns()
        if netns is None:
            raise CriuRestoreError(
                f"cannot restore {self.container.id}: its image was dumped inside a network "
                "namespace, and the container's spec names none to restore it into")
        return netns

    def _spec_netns(self) -> str | None:
        """The network namespace the bundle's spec names by path (the pod's), if any."""
        try:
            spec = json.loads((self.runtime.bundle / "config.json").read_text())
        except (OSError, ValueError):
            return None
        for ns in spec.get("linux", {}).get("namespaces") or ():
            if ns.get("type") == "network" and ns.get("path"):
                return str(ns["path"])
        return None

    def prepare_arrival(self) -> None:
        """A live image already in place (the container arrived from another node): start
        its lazy-pages daemon now, ahead of the restore at ``Start`` (see .live), from a
        thread: the spawn waits until the child has exec'd, which on a loaded node is tens of
        milliseconds ``Create`` need not wait for."""
        if live.remote_page_server(self.paths.snapshot) is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no loop: the restore starts the daemon itself)
            return
        self._arrival_daemon = loop.create_task(
            asyncio.to_thread(live.start_arrival_daemon, self),
            name=f"criu-arrival-{self.container.id}")

    async def _take_arrival_daemon(self) -> lazy.LazyDaemon | None:
        """The lazy-pages daemon :meth:`prepare_arrival` started, if any (now ours)."""
        task, self._arrival_daemon = self._arrival_daemon, None
        if task is None:
            return None
        try:
            return await task
        except Exception:  # the restore starts one itself
            log.exception("starting the lazy-pages daemon ahead failed",
                          extra={"container": self.container.id})
            return None

    async def live_dump(self, page_server_port: int,
                        ready: Callable[[Outcome], None]) -> Outcome:
        """Hand the container over to another node live (see .live)."""
        return await live.hand_over(self, page_server_port, ready)

    async def discard(self) -> None:
        self._dumped = None
        self._drop_spare()
        daemon = await self._take_arrival_daemon()
        if daemon is not None:
            daemon.kill()
            daemon.close()
        tidying, self._tidying = self._tidying, None
        if tidying is not None:
            with contextlib.suppress(Exception):
                await tidying
        if self._lazy_copy is not None:
            self._lazy_copy.cancel()
            with contextlib.suppress(BaseException):
                await self._lazy_copy
            self._lazy_copy = None
        await self._drop_direct()
        await asyncio.to_thread(self.paths.remove_all)

    # --- direct mode (CRIU's RPC, no runc; see .direct) ------------------------------------

    def _direct_state(self) -> runcstate.RuncState | str:
        """runc's state of the container if it can be dumped directly, else why not."""
        try:
            state = runcstate.load(self.runtime.runc_root, self.container.id)
        except runcstate.UnsupportedState as exc:
            return str(exc)
        if state.init_pid != self.runtime.init_pid:
            return f"runc's state names pid {state.init_pid}, the shim {self.runtime.init_pid}"
        if not self.settings.prefreeze or Freezer.for_pid(self.runtime.init_pid) is None:
            return "no cgroup freezer to pre-freeze with"
        return state

    async def _direct_checkpoint(self, state: runcstate.RuncState) -> Outcome | None:
        """Dump through CRIU's RPC; None when runc should be tried instead (app still runs)."""
        start = time.monotonic()
        cid = self.container.id
        pid = self.runtime.init_pid
        await asyncio.to_thread(self.paths.prepare_checkpoint, pre_dump=False)
        marks = [("prepare", time.monotonic())]
        frozen = await self._freeze(pid)
        if frozen.freezer is None:
            return None
        marks.append(("freeze", time.monotonic()))
        mounts = direct.DumpMounts.read(state, pid)
        self._declare_dump_externals(pid, mounts)
        dumped_start = process_start(pid)
        marks.append(("mounts", time.monotonic()))
        options = self._direct_options(frozen.freezer)
        spare = self._take_spare(state.netns_path)
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                binds = await direct.dump(state, pid, options, spare, mounts=mounts)
        except (direct.DirectError, TimeoutError, OSError) as exc:
            error = str(exc) or "timed out"
            thawed = frozen.freezer.thaw()
            running = is_alive(pid)
            tail = log_tail(self.paths.work / "dump.log", TAIL_LINES)
            if thawed and running:
                log.warning("direct dump failed, trying runc checkpoint", extra={
                    "container": cid, "error": error, "log_tail": tail})
                return None
            return await self._checkpoint_failed(error, frozen, pid, time.monotonic() - start)
        marks.append(("criu", time.monotonic()))
        frozen.freezer.thaw()  # the killed tasks die; the restored ones must not start frozen
        self._write_dump_record(netns_joined=state.netns_path is not None)
        duration = time.monotonic() - start
        self._dumped = (pid, dumped_start)
        image = _DirectImage(state, binds)
        self._direct = image
        image.preparing = asyncio.get_running_loop().create_task(
            self._prepare_direct(image), name=f"criu-prepare-{cid}")
        phases, previous = {}, start
        for name, at in marks:
            phases[name] = round((at - previous) * 1e3, 1)
            previous = at
        return self._checkpointed(pid, frozen, duration, "direct", phases_ms=phases)

    async def _prepare_direct(self, image: _DirectImage) -> None:
        """Start the swrk for the next restore (after the dump, off the wake-up path)."""
        stdio = self.runtime.new_stdio()
        fds = (stdio.stdin, stdio.stdout, stdio.stderr)
        threshold = self.settings.lazy_threshold_mib
        lazily = threshold is not None and \
            lazy.image_pages_bytes(self.paths.snapshot) >= threshold << 20
        if lazily and self.settings.lazy_eager_mib:
            try:
                await asyncio.to_thread(eager.make_small_runs_eager, self.paths.snapshot,
                                        self.settings.lazy_eager_mib << 20)
            except (OSError, ValueError) as exc:
                log.warning("the small runs of pages stay lazy too", extra={
                    "container": self.container.id, "error": str(exc)})
        try:
            await asyncio.to_thread(tmpfs.prepare, self.paths.tmpfs, self._tmpfs)
            externals = self._restore_externals()
            if externals:  # now, not at the wake-up
                self._write_config(externals)
        except OSError as exc:
            stdio.close()
            log.error("cannot recreate the container's tmpfs mounts for the restore",
                      extra={"container": self.container.id, "error": str(exc)})
            return
        try:
            image.prepared = direct.prepare_restore(self.criu, image.state, fds,
                                                    self.paths.snapshot, self.paths.work,
                                                    image.cgroup_binds, lazy=lazily,
                                                    log_level=self.settings.log_level)
        except direct.DirectError as exc:
            stdio.close()
            log.warning("cannot pre-spawn CRIU for the restore; it will go through runc",
                        extra={"container": self.container.id, "error": str(exc)})

    async def _direct_restore(self, image: _DirectImage, start: float) -> RestoredProcess | None:
        """Restore through the pre-spawned swrk; None when runc must do it (images intact)."""
        cid = self.container.id
        if image.preparing is not None:
            await image.preparing
        prepared = image.prepared
        if prepared is None:
            await self._clear_for_runc(image.state)
            return None
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                pid = await prepared.restore(file_locks=self.settings.file_locks,
                                             ext_unix_sk=self.settings.ext_unix_sk,
                                             log_level=self.settings.log_level)
        except (direct.DirectError, TimeoutError) as exc:
            prepared.close()
            tail = log_tail(self.paths.work / "restore.log", TAIL_LINES)
            log.warning("direct restore failed, restoring through runc", extra={
                "container": cid, "error": str(exc) or "timed out", "log_tail": tail})
            await self._clear_for_runc(image.state)
            return None
        duration = time.monotonic() - start
        stats = read_stats([self.paths.work / "stats-restore"])
        daemon = prepared.serving
        loop = asyncio.get_running_loop()
        # the app runs: what is left is tidying up, off the wake-up path (a checkpoint waits)
        self._tidying = loop.create_task(self._tidy_after_restore(remove_images=daemon is None),
                                         name=f"criu-tidy-{cid}")
        self._sparing = loop.create_task(self._spare_dump_later(image.state.netns_path),
                                         name=f"criu-spare-{cid}")
        if daemon is not None:
            stats["lazy"] = 1
            self._lazy_copy = loop.create_task(
                self._finish_lazy_copy(daemon, image.state, pid, start),
                name=f"criu-lazy-{cid}")
        phases, previous = {}, start
        for name, at in prepared.timings.items():
            phases[name] = round((at - previous) * 1e3, 1)
            previous = at
        log.info("restored", extra={"container": cid, "pid": pid, "path": "direct",
                                    "lazy": daemon is not None, "phases_ms": phases,
                                    "duration_ms": round(duration * 1e3, 1),
                                    "restore_time_us": stats.get("restore_time")})
        return RestoredProcess(pid, Outcome(ok=True, duration_s=duration, stats=stats))

    async def _spare_dump_later(self, netns: str | None) -> None:
        """Start the ``criu swrk`` of the next dump, a moment after the wake-up (not while
        the app answers its first request): the dump then pays no exec of CRIU and no loading
        of its libraries (3-4 ms on a quiet machine, 10-15 ms on a busy one). An idle swrk
        holds ~1 MiB of its own memory (6.5 MiB RSS, mostly shared libraries)."""
        await asyncio.sleep(SPARE_DELAY_S)
        self._end_spare()
        try:
            self._spare = (netns, Swrk.spawn(self.criu, netns=netns))
        except (SwrkError, OSError) as exc:
            log.info("no CRIU started ahead for the next dump; it will start one",
                     extra={"container": self.container.id, "error": str(exc)})

    def _take_spare(self, netns: str | None) -> Swrk | None:
        """The swrk started ahead for this dump, if it is for this network namespace."""
        self._cancel_sparing()
        if self._spare is not None and self._spare[0] == netns:
            spare, self._spare = self._spare[1], None
            return spare
        self._end_spare()
        return None

    def _drop_spare(self) -> None:
        """No swrk ahead any more: none started, none to be started."""
        self._cancel_sparing()
        self._end_spare()

    def _cancel_sparing(self) -> None:
        if self._sparing is not None:
            self._sparing.cancel()
            self._sparing = None

    def _end_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare[1].kill()
            spare[1].close()

    async def _tidy_after_restore(self, *, remove_images: bool) -> None:
        """Reset the CRIU config, detach the host side of recreated tmpfs mounts, and remove
        the images (unless a lazy-pages daemon still serves from them)."""
        if self._masked or self._tmpfs:
            self._write_config()
        self._tmpfs = []
        await asyncio.to_thread(tmpfs.unmount_all, self.paths.tmpfs)
        if remove_images:
            await asyncio.to_thread(self.paths.remove_images)

    async def _settle(self) -> None:
        """Wait for the tidying after the last restore and for a lazy copy in flight."""
        task, self._tidying = self._tidying, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task
        await self._wait_lazy_copy()

    async def _finish_lazy_copy(self, daemon: lazy.LazyDaemon,
                                state: runcstate.RuncState | None, pid: int,
                                start: float) -> None:
        """Wait for the lazy-pages daemon; remove the images, or kill an incomplete app."""
        cid = self.container.id
        try:
            status = await daemon.wait_exit()
        finally:
            daemon.kill()  # nothing to do if it is gone; on cancellation it must go
            daemon.close()
        if status == 0:
            await asyncio.to_thread(self.paths.remove_images)
            log.info("lazy restore complete: all memory is back", extra={
                "container": cid, "pid": pid,
                "duration_ms": round((time.monotonic() - start) * 1e3, 1)})
            return
        # Pages the daemon never delivered would read as zeros: the app must not go on.
        log.error("the lazy-pages daemon failed before all memory was back; killing the "
                  "container (images kept)", extra={
                      "container": cid, "pid": pid, "status": status,
                      "log_tail": log_tail(self.paths.work / "lazy-pages.log", TAIL_LINES)})
        if state is not None:
            await asyncio.to_thread(direct.kill_cgroup_members, state.cgroup_dirs)

    async def _wait_lazy_copy(self) -> None:
        """A new dump waits until a lazy restore has all its memory back."""
        task, self._lazy_copy = self._lazy_copy, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    async def _clear_for_runc(self, state: runcstate.RuncState) -> None:
        """Make way for ``runc restore`` after a direct dump: nothing half-restored may stay.

        Every process left in the container's cgroups (a partly restored tree, the swrk) is
        killed, then runc's record of the dumped container is deleted (``runc restore``
        refuses an id that exists); the images are untouched.
        """
        await asyncio.to_thread(direct.kill_cgroup_members, state.cgroup_dirs)
        result = await self.runtime.runc("delete", "--force", self.container.id)
        if result.returncode != 0:
            log.warning("runc delete before the fallback restore failed",
                        extra={"container": self.container.id, "error": result.error})

    async def _drop_direct(self) -> None:
        """Release a prepared swrk that will not be used (new checkpoint, discard)."""
        image, self._direct = self._direct, None
        if image is None:
            return
        if image.preparing is not None:
            with contextlib.suppress(Exception):
                await image.preparing
        if image.prepared is not None:
            image.prepared.close()

    @property
    def criu(self) -> str:
        return self._criu or find_criu()


@dataclass
class _DirectImage:
    """A direct dump's leftovers the restore needs, and the swrk being prepared for it."""

    state: runcstate.RuncState
    cgroup_binds: list[tuple[str, Path]]
    preparing: asyncio.Task[None] | None = None
    prepared: direct.PreparedRestore | None = None


def remove_container_images(image_root: Path, container_id: str) -> None:
    """Remove everything kept for ``container_id`` (the container was deleted)."""
    with contextlib.suppress(ValueError):
        ImagePaths(image_root, container_id).remove_all()

