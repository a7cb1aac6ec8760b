"""Live migration in the criu plugin: the source's lazy dump, the target's remote lazy restore.

**Source** (:func:`hand_over`): the container's cgroup is frozen first (as for a direct dump),
then one CRIU RPC DUMP with ``lazy_pages`` and a page server on ``127.0.0.1:<port>``: CRIU
writes everything but the anonymous memory, reports on its status fd ("ready"), and serves
the pages from the still frozen process until the target's ``criu lazy-pages`` has them all;
only then does the RPC answer, and CRIU kills the process. CRIU resolves ``status_fd`` as
``/proc/<our pid>/fd/N`` (the socket pair's creator), so the pipe is ours and stays open
until the answer. At "ready" the small runs of lazy pages are copied into the image
(:func:`.eager.fetch_small_runs`); then the caller lets the target pull it.

**Target** (:func:`restore_remote`): the migration plugin leaves :data:`LIVE_FILE` next to the
pulled image, naming the loopback port of its page-server proxy. ``criu lazy-pages
--page-server`` against it starts when the checkpointer is made in ``Create``
(:func:`start_arrival_daemon`); the restore after ``Start`` is ``runc restore --lazy-pages``
(no runc state exists for a container that arrived: ``runc create`` was skipped); the app
runs while its pages stream in. The daemon's exit status then decides as for a local lazy
restore (:mod:`.lazy`): the images go after a status of 0, otherwise the app is killed
(pages that never came would read as zeros).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from zeropod_core.model import Outcome
from zeropod_core.procfs import is_alive, process_start
from zeropod_core.providers import RestoredProcess

from . import direct, eager, lazy, runcstate
from .criulog import TAIL_LINES, log_tail
from .paths import make_private_dir, tree_size
from .swrk import Swrk, SwrkError, response_error

if TYPE_CHECKING:
    from .checkpointer import CriuCheckpointer

log = logging.getLogger("zeropod.criu.live")

# Written by the migration plugin next to a live image: {"page_server": [host, port]}.
LIVE_FILE = "zeropod-live.json"
# How long the source serves pages before it gives up (upstream's pages-transfer-timeout).
PAGES_TIMEOUT_S = 300.0
PAGE_SERVER_HOST = "127.0.0.1"


class LiveDumpError(RuntimeError):
    """The lazy dump failed; ``ready`` says whether the target may already have started."""

    def __init__(self, message: str, *, ready: bool) -> None:
        super().__init__(message)
        self.ready = ready


def loopback_config(container_config: str | None, work: Path) -> Path:
    """The container's CRIU configuration file (``container_config``, if any) plus
    ``address 127.0.0.1``, written to ``work``.

    CRIU's RPC ignores ``opts.ps.address`` (and ``ps.fd``) for a lazy dump and binds its page
    server to *every* address of the node (``INADDR_ANY``): whoever connected first could read
    the app's memory, or block the target. Only the configuration file can set the address.
    """
    text = ""
    if container_config:
        with contextlib.suppress(FileNotFoundError):
            text = Path(container_config).read_text()
    path = work / "live-dump.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{text.rstrip()}\naddress {PAGE_SERVER_HOST}\n".lstrip())
    return path


async def lazy_dump(state: runcstate.RuncState, pid: int, options: direct.DumpOptions,
                    mounts: direct.DumpMounts, port: int,
                    on_ready: Callable[[], Awaitable[None]], swrk: Swrk | None = None, *,
                    ready_timeout_s: float, pages_timeout_s: float = PAGES_TIMEOUT_S) -> None:
    """Dump ``pid`` lazily (see the module doc); ``on_ready`` is awaited once the image is
    written and the page server listens (the process is still frozen). Returns when every
    page left. ``swrk``: a CRIU started ahead (used up either way). Raises
    :class:`LiveDumpError` (CRIU is killed; the process stays frozen as it was)."""
    direct.write_descriptors(options.images, pid)
    # CRIU stays in the host's network namespace (the pod's is external, as with runc): its
    # page server listens on 127.0.0.1 for the manager's proxy
    request = direct.dump_request(state, pid, options, mounts, in_pod_netns=False)
    opts = request.opts
    opts.lazy_pages = True
    opts.ps.address = PAGE_SERVER_HOST  # (ignored by CRIU 4.2; see loopback_config)
    opts.ps.port = port
    try:
        config = str(loopback_config(state.criu_config, options.work))
        if swrk is None or not swrk.alive:
            if swrk is not None:
                swrk.close()
            swrk = Swrk.spawn(options.criu)
    except (OSError, SwrkError) as exc:
        if swrk is not None:
            swrk.kill()
            swrk.close()
        raise LiveDumpError(f"cannot start the lazy dump: {exc}", ready=False) from exc
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    opts.status_fd = status_w
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()

    def on_status() -> None:
        if not ready.done():
            ready.set_result(os.read(status_r, 1) == b"\0")

    loop.add_reader(status_r, on_status)
    answer = loop.create_task(direct.call(
        swrk, request, options.images, options.work, state, "dump.log", options.log_level,
        options.file_locks, options.ext_unix_sk, config_file=config),
        name=f"criu-lazy-dump-{pid}")
    signalled = False
    try:
        waiting: set[asyncio.Future[object]] = {answer, ready}  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waiting, timeout=ready_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.result():
            signalled = True
            await on_ready()
        elif not done:
            raise LiveDumpError(f"the lazy dump was not ready within {ready_timeout_s} s",
                                ready=False)
        async with asyncio.timeout(pages_timeout_s):
            response = await answer
    except (SwrkError, OSError, TimeoutError) as exc:
        raise LiveDumpError(f"criu lazy dump: {exc or 'the target did not take every page'}",
                            ready=signalled) from exc
    finally:
        loop.remove_reader(status_r)
        os.close(status_r)
        os.close(status_w)
        if not answer.done():
            swrk.kill()
            answer.cancel()
            with contextlib.suppress(BaseException):
                await answer
        swrk.close()
    if not response.success:
        raise LiveDumpError(f"criu lazy dump failed: {response_error(response)}",
                            ready=signalled)


async def hand_over(cp: CriuCheckpointer, port: int,
                    ready: Callable[[Outcome], None]) -> Outcome:
    """The source side of a live migration for ``cp``'s container (see the module doc).

    ``ready`` gets an outcome whose ``duration_s`` is the dump so far and ``image_bytes`` the
    memory-less image. The result's ``duration_s`` runs from the freeze to the last page.
    On success the images are removed at once (the target has them), so nothing is left.
    """
    await cp._settle()
    await cp._drop_direct()
    cid = cp.container.id
    state = cp._direct_state()
    if isinstance(state, str):
        return Outcome(ok=False, duration_s=0.0,
                       error=f"container {cid} cannot move live (CRIU's direct mode): {state}")
    start = time.monotonic()
    marks = [("start", start)]
    try:
        # CRIU starts (exec, its libraries) while the dump is prepared
        swrk = Swrk.spawn(cp.criu)
    except SwrkError as exc:
        return Outcome(ok=False, duration_s=0.0, error=f"container {cid}: {exc}")
    pid = cp.runtime.init_pid
    frozen = None
    try:
        await asyncio.to_thread(cp.paths.prepare_checkpoint, pre_dump=False)
        marks.append(("prepare", time.monotonic()))
        frozen = await cp._freeze(pid)
        if frozen.freezer is None:
            swrk.kill()
            swrk.close()
            return Outcome(ok=False, duration_s=0.0,
                           error=f"container {cid}: cannot freeze its cgroup for a live dump")
        marks.append(("freeze", time.monotonic()))
        mounts = direct.DumpMounts.read(state, pid)
        cp._declare_dump_externals(pid, mounts)
        # what the target's restore must declare travels with the image (.dumprecord)
        cp._write_dump_record(netns_joined=False)
        dumped_start = process_start(pid)
        options = cp._direct_options(frozen.freezer)
        marks.append(("mounts", time.monotonic()))
    except BaseException:
        swrk.kill()
        swrk.close()
        if frozen is not None and frozen.freezer is not None:
            frozen.freezer.thaw()  # nothing was dumped: the app runs on
        raise
    ready_at = 0.0

    async def signal_ready() -> None:
        nonlocal ready_at
        marks.append(("criu", time.monotonic()))
        eager_bytes = await _copy_small_runs(cp, pid)
        ready_at = time.monotonic()
        marks.append(("copy", ready_at))
        image = Outcome(ok=True, duration_s=ready_at - start,
                        image_bytes=tree_size(cp.paths.snapshot))
        log.info("live dump ready: the image is written, pages wait behind the page server",
                 extra={"container": cid, "port": port, "image_bytes": image.image_bytes,
                        "eager_bytes": eager_bytes, "phases_ms": _phases(marks),
                        "duration_ms": round(image.duration_s * 1e3, 1)})
        ready(image)

    try:
        await lazy_dump(state, pid, options, mounts, port, signal_ready, swrk,
                        ready_timeout_s=cp.settings.timeout_s)
    except LiveDumpError as exc:
        tail = log_tail(cp.paths.work / "dump.log", TAIL_LINES)
        if not exc.ready:
            return await cp._checkpoint_failed(str(exc), frozen, pid, time.monotonic() - start)
        # The target may run with part of the memory; its lazy-pages daemon fails and kills
        # it there. Here the app is still whole (frozen): it goes on.
        thawed = frozen.freezer.thaw()
        await asyncio.to_thread(cp.paths.remove_images)
        log.error("live migration failed while the target fetched pages; the app goes on "
                  "here", extra={"container": cid, "error": str(exc), "log_tail": tail,
                                 "thawed": thawed, "running": is_alive(pid)})
        return Outcome(ok=False, duration_s=time.monotonic() - start, error=str(exc),
                       log_tail=tail)
    frozen.freezer.thaw()  # the killed tasks die
    done = time.monotonic()
    cp._dumped = (pid, dumped_start)
    await asyncio.to_thread(cp.paths.remove_images)
    log.info("handed over live: every page left", extra={
        "container": cid, "pid": pid, "ready_ms": round((ready_at - start) * 1e3, 1),
        "pages_ms": round((done - ready_at) * 1e3, 1)})
    return Outcome(ok=True, duration_s=done - start)


def _phases(marks: list[tuple[str, float]]) -> dict[str, float]:
    """Milliseconds between consecutive ``(name, time.monotonic())`` marks."""
    return {name: round((at - before) * 1e3, 1)
            for (_, before), (name, at) in itertools.pairwise(marks)}


async def _copy_small_runs(cp: CriuCheckpointer, pid: int) -> int:
    """The small lazy runs into the image (:func:`.eager.fetch_small_runs`), within the
    settings' ``lazy_eager_mib``; bytes copied, 0 when it failed (all pages stay lazy)."""
    budget = cp.settings.lazy_eager_mib << 20
    try:
        return await asyncio.to_thread(eager.fetch_small_runs, cp.paths.snapshot, budget, pid)
    except Exception as exc:  # noqa: BLE001 - any failure: the image as CRIU wrote it
        log.warning("the small runs of pages stay lazy too (the target fetches them on "
                    "its first faults)", extra={"container": cp.container.id,
                                               "error": str(exc)})
        return 0


def remote_page_server(snapshot: Path) -> tuple[str, int] | None:
    """The page server a live image's pages come from (:data:`LIVE_FILE`), or None."""
    try:
        host, port = json.loads((snapshot / LIVE_FILE).read_text())["page_server"]
        return str(host), int(port)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_arrival_daemon(cp: CriuCheckpointer) -> lazy.LazyDaemon | None:
    """Start the ``criu lazy-pages`` daemon of a live image already in place (the target
    shim's ``Create`` took it), so its start-up (an exec of ``sh`` and of CRIU, the image
    read: 20-40 ms) overlaps the way from ``Create`` to ``Start`` instead of delaying the
    restore. None when the image is not a live one or the daemon cannot start (then
    :func:`restore_remote` starts one itself)."""
    page_server = remote_page_server(cp.paths.snapshot)
    if page_server is None:
        return None
    try:
        make_private_dir(cp.paths.work)
        daemon = lazy.LazyDaemon.spawn(cp.criu, cp.paths.snapshot, cp.paths.work,
                                       cp.settings.log_level, page_server=page_server)
        log.info("lazy-pages daemon started ahead of the live restore", extra={
            "container": cp.container.id, "page_server": list(page_server)})
        return daemon
    except OSError as exc:
        log.warning("cannot start the lazy-pages daemon ahead of the live restore",
                    extra={"container": cp.container.id, "error": str(exc)})
        return None


async def restore_remote(cp: CriuCheckpointer, page_server: tuple[str, int],
                         start: float, daemon: lazy.LazyDaemon | None = None,
                         ) -> RestoredProcess:
    """The target side: a lazy restore whose pages come from ``page_server``; ``daemon``:
    its lazy-pages daemon started ahead (:func:`start_arrival_daemon`), if still running."""
    cid = cp.container.id
    (cp.paths.snapshot / LIVE_FILE).unlink(missing_ok=True)  # one-shot
    if daemon is not None and not daemon.running:
        daemon.close()
        daemon = None
    if daemon is None:
        make_private_dir(cp.paths.work)
        daemon = lazy.LazyDaemon.spawn(cp.criu, cp.paths.snapshot, cp.paths.work,
                                       cp.settings.log_level, page_server=page_server)
    try:
        if not await daemon.wait_ready(cp.settings.timeout_s):
            tail = log_tail(cp.paths.work / "lazy-pages.log", TAIL_LINES)
            from .checkpointer import CriuRestoreError  # (that module imports this one)
            raise CriuRestoreError(f"criu lazy-pages for {cid} did not start:\n{tail}",
                                   log_tail=tail)
        daemon_ready = time.monotonic()
        restored = await cp._runc_restore(start, lazy_pages=True)
        log.info("restored live: pages stream in from the source", extra={
            "container": cid, "pid": restored.pid, "page_server": list(page_server),
            "daemon_ms": round((daemon_ready - start) * 1e3, 1),
            "restore_ms": round((time.monotonic() - daemon_ready) * 1e3, 1)})
    except BaseException:
        daemon.kill()
        daemon.close()
        raise
    try:
        state = runcstate.load(cp.runtime.runc_root, cid)
    except runcstate.UnsupportedState as exc:
        log.warning("cannot read runc's state of the restored container; an incomplete "
                    "lazy copy could not stop it", extra={"container": cid, "error": str(exc)})
        state = None
    cp._lazy_copy = asyncio.get_running_loop().create_task(
        cp._finish_lazy_copy(daemon, state, restored.pid, start), name=f"criu-live-{cid}")
    return restored
