"""``containerd.task.v2.Task`` over runc: what containerd and ``ctr`` call on the shim.

Behaviour follows containerd's own runc shim (``io.containerd.runc.v2``) so that the two are
interchangeable: the same errors for the same mistakes, the same events in the same order.
Each RPC method takes a decoded request message and returns a response message; errors are
raised as ttrpc status exceptions (NotFound, FailedPrecondition, ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from zeropod_core import config as cfg
from zeropod_core import ttrpc
from zeropod_core.api import cgroups_v1, events, runc_options, task, task_types, typeurl
from zeropod_core.builtin.cold_start import ColdStart
from zeropod_core.hooks import ShimHooks
from zeropod_core.model import ContainerInfo, Trigger
from zeropod_core.providers import Checkpointer

from . import mounts
from .events import EventPublisher
from .oom import OomWatcher
from .pbtime import timestamp
from .process import Container, Process, State
from .reaper import Exit, Reaper
from .runc import Runc, RuncError
from .runtime import ContainerRuntime
from .scaler import RestoreFailed, Scaler, ScalerSettings
from .stats import metrics_from_runc_stats
from .stdio import ProcessIO, StdioPaths

log = logging.getLogger("zeropod.shim.task")

EMPTY = empty_pb2.Empty


@dataclass(frozen=True)
class ShimConfig:
    """What the shim was started with."""

    namespace: str
    containerd_address: str
    ttrpc_address: str
    shim_address: str

    @property
    def default_runc_root(self) -> Path:
        """runc.v2 uses /run/containerd/runc; we put it next to containerd's socket, which is
        the same folder on a node and stays inside a private containerd's folder in tests."""
        return Path(self.containerd_address).parent / "runc"


def container_info(container_id: str, bundle: Path, namespace: str,
                   spec: dict[str, Any]) -> ContainerInfo:
    """Who the container is, from its OCI spec (CRI annotations name the pod)."""
    annotations = {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
    netns = next((ns.get("path", "") for ns in spec.get("linux", {}).get("namespaces", [])
                  if ns.get("type") == "network"), "")
    return ContainerInfo(
        id=container_id, bundle=str(bundle), namespace=namespace, annotations=annotations,
        sandbox=annotations.get("io.kubernetes.cri.container-type") == "sandbox",
        pod_name=annotations.get("io.kubernetes.cri.sandbox-name", ""),
        pod_namespace=annotations.get("io.kubernetes.cri.sandbox-namespace", ""),
        container_name=annotations.get("io.kubernetes.cri.container-name", ""),
        netns_path=netns)


_STOP_SIGNALS = frozenset({2, 3, 9, 15})  # INT, QUIT, KILL, TERM: the container is being stopped


def _scaled_down(container: Container) -> bool:
    return container.scaler is not None and container.scaler.scaled_down


def _sleeping_metrics() -> Any:
    """Small non-zero numbers: all-zero metrics are dropped by metrics-server (upstream #111)."""
    metrics = cgroups_v1.Metrics()
    metrics.cpu.usage.total = 1
    metrics.memory.usage.usage = 1
    metrics.pids.current = 1
    return metrics


class TaskService:
    """The Task API for every container of this shim."""

    def __init__(self, config: ShimConfig, reaper: Reaper, publisher: EventPublisher,
                 hooks: ShimHooks, on_shutdown: Callable[[], None]) -> None:
        self.config, self.reaper, self.publisher, self.hooks = config, reaper, publisher, hooks
        self.containers: dict[str, Container] = {}
        self._on_shutdown = on_shutdown

    # --- helpers ----------------------------------------------------------------------------

    def _container(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise ttrpc.NotFound(f"container {container_id}: not found")
        return container

    def _process(self, container_id: str, exec_id: str) -> tuple[Container, Process]:
        container = self._container(container_id)
        process = container.process(exec_id)
        if process is None:
            raise ttrpc.NotFound(f"process {exec_id} does not exist: not found")
        return container, process

    def _runc_for(self, bundle: Path, options: Any) -> Runc:
        root = Path(options.root) if options.root else self.config.default_runc_root
        return Runc(self.reaper, root / self.config.namespace, bundle / "log.json",
                    binary=options.binary_name or "runc", criu=options.criu_path or None,
                    systemd_cgroup=options.systemd_cgroup)

    def _watch(self, container: Container, process: Process) -> None:
        def on_exit(exited: Exit) -> None:
            asyncio.get_running_loop().create_task(
                self._handle_exit(container, process, exited),
                name=f"exit-{container.id}-{process.exec_id or 'init'}")

        self.reaper.watch(process.pid, on_exit)

    async def _handle_exit(self, container: Container, process: Process, exited: Exit) -> None:
        scaler = container.scaler
        if scaler is not None:
            if process is container.init and scaler.claims_exit(exited.pid):
                log.debug("checkpointed process exited (swallowed)",
                          extra={"container": container.id, "pid": exited.pid})
                return
            if process is container.init:
                await scaler.stop()
            else:
                scaler.exec_exited()
        await process.record_exit(exited)
        async with container.event_lock:
            self.publisher.publish(events.TaskExit(
                container_id=container.id, id=process.exec_id or container.id,
                pid=process.pid, exit_status=exited.status, exited_at=timestamp(exited.at)))
        log.info("process exited", extra={"container": container.id, "exec": process.exec_id,
                                          "pid": process.pid, "status": exited.status})

    async def _start_io(self, process: Process) -> ProcessIO:
        return ProcessIO.console(process.paths) if process.paths.terminal else (
            ProcessIO.pipes(process.paths))

    async def _spawn_with_io(self, container: Container, process: Process,
                             args: list[str]) -> int:
        """Run a runc command that starts ``process`` (create/exec); return its PID."""
        io = await self._start_io(process)
        process.io = io
        pid_file = container.bundle / (f"{process.exec_id}.pid" if process.exec_id else "init.pid")
        if io.console_socket_path:
            args = [*args[:1], "--console-socket", io.console_socket_path, *args[1:]]
        args = [*args[:1], "--pid-file", str(pid_file), *args[1:]]
        try:
            runc_call = container.runc.run(*args, stdio=io.child_fds)
            if io.console_socket_path:
                await asyncio.gather(runc_call, io.receive_console())
            else:
                await runc_call
            pid = int(pid_file.read_text())
        except BaseException:
            io.close()
            process.io = None
            raise
        io.close_child_ends()
        io.start_copying(asyncio.get_running_loop())
        return pid

    # --- scale to zero ----------------------------------------------------------------------

    def _managed(self, info: ContainerInfo, values: dict[str, object], terminal: bool) -> bool:
        """Whether this container may scale down (never the pod's sandbox)."""
        if info.sandbox:
            return False
        names = values.get(cfg.CONTAINER_NAMES)
        if isinstance(names, frozenset) and names and \
                not {info.container_name, info.id} & names:
            return False
        if not values.get(cfg.SCALEDOWN_DURATION):
            return False
        if terminal:
            log.info("not scaling a container with a terminal", extra={"container": info.id})
            return False
        return True

    def _make_scaler(self, container: Container, values: dict[str, object]) -> Scaler:
        runtime = ContainerRuntime(container)
        fallback = ColdStart(runtime)
        settings = ScalerSettings.from_config(
            values, [n for n in (container.info.container_name, container.id) if n])
        checkpointer: Checkpointer = fallback
        if settings.checkpointing:
            checkpointer = self.hooks.make_checkpointer(container.info, runtime, values) or \
                fallback
        has_netns = bool(container.info.netns_path)
        return Scaler(
            container=container, settings=settings, checkpointer=checkpointer,
            fallback=fallback,
            redirector=self.hooks.make_redirector(container.info) if has_netns else None,
            tracker=self.hooks.make_activity_tracker(container.info) if has_netns else None,
            hooks=self.hooks, adopt=lambda pid: self._adopt(container, pid),
            give_up=lambda status: self._give_up(container, status))

    def _adopt(self, container: Container, pid: int) -> None:
        """A restore (or cold start) gave the init a new host PID: follow it."""
        container.init.pid = pid
        self._watch(container, container.init)

    def _give_up(self, container: Container, status: int) -> None:
        """The container ends without a process to reap (killed or failed while asleep)."""
        exited = Exit(container.init.pid, status, time.time())
        asyncio.get_running_loop().create_task(
            self._handle_exit(container, container.init, exited),
            name=f"exit-{container.id}-init")

    async def _wake(self, container: Container, trigger: Trigger) -> None:
        if container.scaler is None:
            return
        try:
            await container.scaler.restore(trigger)
        except RestoreFailed as exc:
            raise ttrpc.FailedPrecondition(f"container {container.id} could not be woken: "
                                           f"{exc}") from exc

    # --- the Task service -------------------------------------------------------------------

    async def create(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        if req.id in self.containers:
            raise ttrpc.AlreadyExists(f"container {req.id}: already exists")
        if req.checkpoint:
            raise ttrpc.Unimplemented("creating a task from a checkpoint is not supported")
        bundle = Path(req.bundle)
        spec = json.loads((bundle / "config.json").read_text())
        info = container_info(req.id, bundle, self.config.namespace, spec)
        try:
            values = self.hooks.annotations().parse(info.annotations)
        except cfg.ConfigError as exc:
            raise ttrpc.InvalidArgument(f"zeropod: {exc}") from exc
        managed = self._managed(info, values, req.terminal)
        if managed:
            before = json.dumps(spec, sort_keys=True)
            self.hooks.modify_spec(info, spec, values)
            if json.dumps(spec, sort_keys=True) != before:
                (bundle / "config.json").write_text(json.dumps(spec))
                info = container_info(req.id, bundle, self.config.namespace, spec)
        options = runc_options.Options()
        if req.HasField("options") and typeurl.is_type(req.options, runc_options.Options):
            options = typeurl.unpack(req.options, runc_options.Options)
        runc = self._runc_for(bundle, options)
        (bundle / "options.json").write_text(json.dumps(
            {"root": str(runc.root.parent), "binary_name": runc.binary}))
        rootfs = bundle / "rootfs"
        mounted = False
        if req.rootfs:
            rootfs.mkdir(exist_ok=True)
            mounts.mount_all([mounts.Mount(m.type, m.source, list(m.options))
                              for m in req.rootfs], str(rootfs))
            mounted = True
        paths = StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal)
        init = Process(req.id, "", paths)
        container = Container(req.id, bundle, runc, init, spec, info, rootfs_mounted=mounted)
        args = ["create", "--bundle", str(bundle)]
        if options.no_pivot_root:
            args.insert(1, "--no-pivot")
        if options.no_new_keyring:
            args.insert(1, "--no-new-keyring")
        args.append(req.id)
        try:
            init.pid = await self._spawn_with_io(container, init, args)
        except RuncError as exc:
            if mounted:
                mounts.unmount_all(str(rootfs))
            raise ttrpc.Unknown(f"failed to create shim task: OCI runtime create failed: "
                                f"{exc.message}") from exc
        self.containers[req.id] = container
        self._watch(container, init)
        container.oom = OomWatcher.for_pid(
            asyncio.get_running_loop(), init.pid,
            lambda: self.publisher.publish(events.TaskOOM(container_id=req.id)))
        if managed:
            container.scaler = self._make_scaler(container, values)
        self.hooks.container_created(container.info, values)
        self.publisher.publish(events.TaskCreate(
            container_id=req.id, bundle=req.bundle, rootfs=list(req.rootfs),
            io=events.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                             terminal=req.terminal),
            checkpoint=req.checkpoint, pid=init.pid))
        log.info("container created", extra={"container": req.id, "pid": init.pid})
        return task.CreateTaskResponse(pid=init.pid)

    async def start(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container, process = self._process(req.id, req.exec_id)
        async with container.event_lock:
            if process.state is not State.CREATED:
                raise ttrpc.FailedPrecondition(
                    f"process {req.exec_id or req.id} is {process.state.name.lower()}, "
                    "not created")
            if not req.exec_id:
                try:
                    await container.runc.run("start", req.id)
                except RuncError as exc:
                    raise ttrpc.Unknown(f"OCI runtime start failed: {exc.message}") from exc
                if process.state is State.CREATED:
                    process.state = State.RUNNING
                self.publisher.publish(events.TaskStart(container_id=req.id, pid=process.pid))
                if container.scaler is not None and process.state is State.RUNNING:
                    container.scaler.begin()
            else:
                await self._start_exec(container, process)
        return task.StartResponse(pid=process.pid)

    async def _start_exec(self, container: Container, process: Process) -> None:
        spec_file = container.bundle / f"{process.exec_id}.process.json"
        spec_file.write_text(json.dumps(process.spec))
        try:
            process.pid = await self._spawn_with_io(container, process, [
                "exec", "--detach", "--process", str(spec_file), container.id])
        except RuncError as exc:
            process.state = State.STOPPED
            raise ttrpc.Unknown(f"OCI runtime exec failed: {exc.message}") from exc
        finally:
            spec_file.unlink(missing_ok=True)
        process.state = State.RUNNING
        if container.scaler is not None:
            container.scaler.exec_started()
        self._watch(container, process)
        self.publisher.publish(events.TaskExecStarted(
            container_id=container.id, exec_id=process.exec_id, pid=process.pid))

    async def exec(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._container(req.id)
        if req.exec_id in container.execs:
            raise ttrpc.AlreadyExists(f"id {req.exec_id}: already exists")
        if container.init.state is not State.RUNNING:
            raise ttrpc.FailedPrecondition(f"container {req.id} is not running")
        await self._wake(container, Trigger.EXEC)
        spec = json.loads(req.spec.value) if req.HasField("spec") else {}
        process = Process(req.id, req.exec_id,
                          StdioPaths(req.stdin, req.stdout, req.stderr, req.terminal), spec=spec)
        container.execs[req.exec_id] = process
        self.publisher.publish(events.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return EMPTY()

    async def state(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container, process = self._process(req.id, req.exec_id)
        return task.StateResponse(
            id=req.exec_id or req.id, bundle=str(container.bundle), pid=process.pid,
            status=process.state.name, stdin=process.paths.stdin, stdout=process.paths.stdout,
            stderr=process.paths.stderr, terminal=process.paths.terminal,
            exit_status=process.exit_status, exited_at=timestamp(process.exited_at),
            exec_id=req.exec_id)

    async def kill(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container, process = self._process(req.id, req.exec_id)
        if process.state is State.STOPPED:
            raise ttrpc.NotFound("process already finished: not found")
        if req.exec_id:
            try:
                os.kill(process.pid, req.signal)
            except ProcessLookupError as exc:
                raise ttrpc.NotFound("process already finished: not found") from exc
            return EMPTY()
        if container.scaler is not None:
            if req.signal in _STOP_SIGNALS:
                if await container.scaler.stop():
                    # nothing runs while scaled down: the container ends with this signal
                    self._give_up(container, 128 + req.signal)
                    return EMPTY()
            else:
                await self._wake(container, Trigger.MANUAL)
        args = ["kill", *(["--all"] if req.all else []), req.id, str(req.signal)]
        try:
            await container.runc.run(*args)
        except RuncError as exc:
            if "not running" in exc.message or "not exist" in exc.message:
                raise ttrpc.NotFound("process already finished: not found") from exc
            raise ttrpc.Unknown(exc.message) from exc
        return EMPTY()

    async def wait(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        _, process = self._process(req.id, req.exec_id)
        await process.exited.wait()
        return task.WaitResponse(exit_status=process.exit_status,
                                 exited_at=timestamp(process.exited_at))

    async def delete(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container, process = self._process(req.id, req.exec_id)
        if req.exec_id:
            if process.state in (State.RUNNING, State.PAUSED):
                raise ttrpc.FailedPrecondition(f"cannot delete running exec {req.exec_id}")
            del container.execs[req.exec_id]
            if process.io is not None:
                process.io.close()
            return task.DeleteResponse(pid=process.pid, exit_status=process.exit_status,
                                       exited_at=timestamp(process.exited_at))
        if process.state in (State.RUNNING, State.PAUSED):
            raise ttrpc.FailedPrecondition(f"cannot delete running task {req.id}")
        if container.scaler is not None:
            await container.scaler.close()
        await self._destroy(container)
        self.hooks.container_deleted(container.info)
        self.publisher.publish(events.TaskDelete(
            container_id=req.id, pid=process.pid, exit_status=process.exit_status,
            exited_at=timestamp(process.exited_at), id=req.id))
        log.info("container deleted", extra={"container": req.id})
        return task.DeleteResponse(pid=process.pid, exit_status=process.exit_status,
                                   exited_at=timestamp(process.exited_at))

    async def _destroy(self, container: Container) -> None:
        """runc delete, stop the pumps, unmount the rootfs, forget the container."""
        init = container.init
        if init.state is State.CREATED:
            self.reaper.unwatch(init.pid)
        try:
            await container.runc.run("delete", "--force", container.id)
        except RuncError as exc:
            if "not exist" not in exc.message:
                log.warning("runc delete failed", extra={"container": container.id,
                                                          "error": exc.message})
        if init.state is State.CREATED:
            init.mark_killed_without_exit()
        for process in (init, *container.execs.values()):
            if process.io is not None:
                process.io.close()
        if container.oom is not None:
            container.oom.close()
        if container.rootfs_mounted:
            mounts.unmount_all(str(container.bundle / "rootfs"))
        del self.containers[container.id]

    async def pids(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._container(req.id)
        if _scaled_down(container):
            return task.PidsResponse(processes=[task_types.ProcessInfo(pid=container.init.pid)])
        try:
            pids = await container.runc.json("ps", "--format", "json", req.id) or []
        except RuncError as exc:
            raise ttrpc.Unknown(f"failed to list pids: {exc.message}") from exc
        by_pid = {p.pid: p.exec_id for p in container.execs.values() if p.pid}
        processes = []
        for pid in pids:
            info = task_types.ProcessInfo(pid=pid)
            if pid in by_pid:
                info.info.CopyFrom(typeurl.pack(runc_options.ProcessDetails(exec_id=by_pid[pid])))
            processes.append(info)
        return task.PidsResponse(processes=processes)

    async def pause(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._container(req.id)
        await self._wake(container, Trigger.MANUAL)
        await self._runc_or_unknown(container, "pause", req.id)
        container.init.state = State.PAUSED
        self.publisher.publish(events.TaskPaused(container_id=req.id))
        return EMPTY()

    async def resume(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._container(req.id)
        await self._runc_or_unknown(container, "resume", req.id)
        container.init.state = State.RUNNING
        self.publisher.publish(events.TaskResumed(container_id=req.id))
        return EMPTY()

    async def _runc_or_unknown(self, container: Container, *args: str) -> None:
        try:
            await container.runc.run(*args)
        except RuncError as exc:
            raise ttrpc.Unknown(exc.message) from exc

    async def close_io(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        _, process = self._process(req.id, req.exec_id)
        if req.stdin and process.io is not None:
            process.io.close_stdin()
        return EMPTY()

    async def resize_pty(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        _, process = self._process(req.id, req.exec_id)
        if process.io is None or process.io.master is None:
            raise ttrpc.FailedPrecondition("the process has no terminal")
        process.io.resize(req.width, req.height)
        return EMPTY()

    async def update(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._container(req.id)
        if _scaled_down(container):
            log.info("update ignored while scaled down", extra={"container": req.id})
            return EMPTY()
        try:
            await container.runc.run("update", "--resources", "-", req.id,
                                     input=req.resources.value)
        except RuncError as exc:
            raise ttrpc.Unknown(exc.message) from exc
        return EMPTY()

    async def stats(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._container(req.id)
        if _scaled_down(container):
            return task.StatsResponse(stats=typeurl.pack(_sleeping_metrics()))
        try:
            raw = await container.runc.json("events", "--stats", req.id)
        except RuncError as exc:
            raise ttrpc.Unknown(f"failed to get stats: {exc.message}") from exc
        metrics: cgroups_v1.Metrics = metrics_from_runc_stats(raw.get("data", {}))
        return task.StatsResponse(stats=typeurl.pack(metrics))

    async def connect(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self.containers.get(req.id)
        return task.ConnectResponse(shim_pid=os.getpid(),
                                    task_pid=container.init.pid if container else 0)

    async def shutdown(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        if not self.containers:
            self._on_shutdown()
        return EMPTY()
