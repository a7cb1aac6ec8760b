"""containerd's own checkpoint API through runc: ``Task.Checkpoint`` and tasks created from an
image (``ctr c checkpoint``/``ctr c restore``, the kubelet's container checkpoint).

This is not scale to zero: the image goes where containerd says (it packs it into its content
store afterwards) and the container usually keeps running (``--leave-running``). The flags are
the ones containerd's runc shim passes for the same ``CheckpointOptions``, so an image made
here restores under ``io.containerd.runc.v2`` and the other way round. CRIU is the same 4.2
runc finds on PATH, with the container's zeropod CRIU configuration when it has one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from zeropod_core.model import ContainerInfo
from zeropod_core.providers import (
    CheckpointApiError,
    CheckpointRequest,
    RestoreRequest,
    RuntimeHandle,
    StdioPipes,
)

from .criulog import TAIL_LINES, log_tail

log = logging.getLogger("zeropod.criu.task_api")


def checkpoint_flags(request: CheckpointRequest) -> list[str]:
    """runc's flags for ``request`` (go-runc's ``CheckpointOpts.args``, same order)."""
    flags = []
    if request.open_tcp:
        flags.append("--tcp-established")
    if request.external_unix_sockets:
        flags.append("--ext-unix-sk")
    if request.terminal:
        flags.append("--shell-job")
    if request.cgroups_mode:
        flags += ["--manage-cgroups-mode", request.cgroups_mode]
    if request.file_locks:
        flags.append("--file-locks")
    for namespace in request.empty_namespaces:
        flags += ["--empty-ns", namespace]
    return flags


class RuncTaskCheckpointer:
    """Serves containerd's checkpoint calls for one container with ``runc``.

    :param timeout_s: runc and CRIU are killed after this long (a damaged image can make
        CRIU hang).
    """

    def __init__(self, container: ContainerInfo, runtime: RuntimeHandle, *,
                 timeout_s: float) -> None:
        self.container, self.runtime, self.timeout_s = container, runtime, timeout_s

    async def checkpoint(self, request: CheckpointRequest) -> None:
        if not request.image_path:
            raise CheckpointApiError("checkpoint: no image path given")
        work = Path(request.work_path) if request.work_path else \
            self.runtime.bundle / "criu-work"
        args = ["checkpoint", "--image-path", request.image_path, "--work-path", str(work)]
        if not request.exit:
            args.append("--leave-running")
        args += checkpoint_flags(request)
        try:
            result = await self.runtime.runc(*args, self.container.id,
                                             timeout_s=self.timeout_s)
            if result.returncode != 0:
                raise self._failure("checkpoint", result.error, work / "dump.log",
                                    self.runtime.bundle / "criu-dump.log")
        finally:
            if not request.work_path:  # ours: CRIU's log was copied on failure
                await asyncio.to_thread(shutil.rmtree, work, True)
        log.info("checkpoint for containerd written", extra={
            "container": self.container.id, "image": request.image_path,
            "exit": request.exit})

    async def restore(self, request: RestoreRequest, stdio: StdioPipes | None) -> None:
        args = ["restore", "--detach", "--pid-file", request.pid_file, "--no-subreaper"]
        if request.no_pivot_root:
            args.append("--no-pivot")
        if request.console_socket:
            args += ["--console-socket", request.console_socket]
        args += ["--image-path", request.image_path, "--work-path", request.work_path,
                 "--bundle", str(self.runtime.bundle), self.container.id]
        result = await self.runtime.runc(*args, stdio=stdio, timeout_s=self.timeout_s)
        if result.returncode != 0:
            raise self._failure("restore", result.error,
                                Path(request.work_path) / "restore.log",
                                self.runtime.bundle / "criu-restore.log")
        log.info("restored from containerd's checkpoint", extra={
            "container": self.container.id, "image": request.image_path})

    def _failure(self, action: str, error: str, criu_log: Path,
                 kept_log: Path) -> CheckpointApiError:
        """The error containerd shows, with CRIU's log kept in the bundle (runc.v2 keeps
        ``criu-dump.log`` there too)."""
        try:
            shutil.copyfile(criu_log, kept_log)
            where = f"path= {kept_log}"
        except OSError:
            where = f"no CRIU log at {criu_log}"
        tail = log_tail(kept_log if kept_log.exists() else criu_log, TAIL_LINES)
        log.warning(f"{action} for containerd failed", extra={
            "container": self.container.id, "error": error, "log_tail": tail})
        last = tail.splitlines()[-1] if tail else ""
        return CheckpointApiError(
            f"runc {action} failed: {error or 'no error logged'}"
            f"{' (CRIU: ' + last.strip() + ')' if last else ''} {where}")
