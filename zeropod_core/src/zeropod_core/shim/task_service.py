"""``containerd.task.v2.Task`` over runc: what containerd and ``ctr`` call on the shim.

Behaviour follows containerd's own runc shim (``io.containerd.runc.v2``) so that the two are
interchangeable: the same errors for the same mistakes, the same events in the same order.
Each RPC method takes a decoded request message and returns a response message; errors are
raised as ttrpc status exceptions (NotFound, FailedPrecondition, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from zeropod_core import config as cfg
from zeropod_core import ttrpc
from zeropod_core.api import cgroups_v1, events, runc_options, task, task_types, typeurl
from zeropod_core.builtin.cold_start import ColdStart
from zeropod_core.hooks import ShimHooks
from zeropod_core.model import ContainerInfo, Trigger
from zeropod_core.providers import (
    CheckpointApiError,
    Checkpointer,
    IncomingImage,
    RestoreRequest,
    StdioPipes,
    TaskCheckpointer,
)

from . import cgroups, mounts
from .events import EventPublisher
from .oom import OomWatcher
from .options import (
    CreateSettings,
    UnsupportedOptions,
    checkpoint_settings,
    create_settings,
)
from .pbtime import timestamp
from .process import Container, Process, State
from .reaper import Exit, Reaper
from .runc import Runc, RuncError, kills_all_on_exit
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
# After init's exit, how long the shim waits for the container's other processes to be gone
# (SIGKILLed by `runc kill --all` when it shares the host's PID namespace) before it reports
# the exit anyway.
_LEFTOVER_WAIT_S = 2.0

# A process's start: given its stdio fds (pipes, or all None for a terminal), the console
# socket path ("" without a terminal) and the pid file, run the runc command that starts it.
Launch = Callable[[tuple[int | None, int | None, int | None], str, Path], Awaitable[None]]


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
        self._arrivals: set[asyncio.Task[None]] = set()  # live arrivals being restored
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

    def _runc_for(self, bundle: Path, options: CreateSettings) -> Runc:
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
        if process is container.init:
            await self._end_other_processes(container)
        await process.record_exit(exited)
        async with container.event_lock:
            self.publisher.publish(events.TaskExit(
                container_id=container.id, id=process.exec_id or container.id,
                pid=process.pid, exit_status=exited.status, exited_at=timestamp(exited.at)))
        process.exit_published.set()
        log.info("process exited", extra={"container": container.id, "exec": process.exec_id,
                                          "pid": process.pid, "status": exited.status})

    async def _end_other_processes(self, container: Container) -> None:
        """Init exited: nothing of the container may outlive it, as with runc.v2.

        With its own PID namespace the kernel has killed the rest already. Sharing another
        namespace (the host's, a pod's), the container's other processes live on, so they are
        SIGKILLed through runc and awaited. Execs report their exits before init does.
        """
        if kills_all_on_exit(container.spec):
            try:
                await container.runc.run("kill", "--all", container.id, "9")
            except RuncError as exc:
                log.debug("kill --all after init's exit", extra={"container": container.id,
                                                                  "error": exc.message})
            if not await cgroups.wait_empty(container.cgroup_procs, _LEFTOVER_WAIT_S):
                log.warning("processes of the container outlived its init",
                            extra={"container": container.id})
        running = [p.exit_published.wait() for p in container.execs.values()
                   if p.state in (State.RUNNING, State.PAUSED)]
        if running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*running), _LEFTOVER_WAIT_S)

    def _start_io(self, container: Container, process: Process) -> ProcessIO:
        if process.paths.terminal:
            return ProcessIO.console(process.paths)
        return ProcessIO.pipes(process.paths, container.io_uid, container.io_gid)

    async def _spawn_with_io(self, container: Container, process: Process,
                             args: list[str]) -> int:
        """Run a runc command that starts ``process`` (create/exec); return its PID."""
        async def launch(fds: tuple[int | None, int | None, int | None], console: str,
                         pid_file: Path) -> None:
            extra = ["--pid-file", str(pid_file)]
            if console:
                extra += ["--console-socket", console]
            await container.runc.run(args[0], *extra, *args[1:], stdio=fds)

        return await self._launch_with_io(container, process, launch)

    async def _launch_with_io(self, container: Container, process: Process,
                              launch: Launch) -> int:
        """Give ``process`` its stdio, start it with ``launch``, return its PID."""
        io = self._start_io(container, process)
        process.io = io
        pid_file = container.bundle / (f"{process.exec_id}.pid" if process.exec_id else "init.pid")
        try:
            started = launch(io.child_fds, io.console_socket_path, pid_file)
            if io.console_socket_path:
                await asyncio.gather(started, io.receive_console())
            else:
                await started
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
            info=container.info, init_pid=lambda: container.init.pid, settings=settings,
            checkpointer=checkpointer, fallback=fallback,
            redirector=self.hooks.make_redirector(container.info) if has_netns else None,
            tracker=self.hooks.make_activity_tracker(container.info) if has_netns else None,
            hooks=self.hooks, adopt=lambda pid: self._adopt(container, pid),
            give_up=lambda status: self._give_up(container, status),
            apply_update=lambda resources: self._runc_update(
                container, json.dumps(resources).encode()))

    def _adopt(self, container: Container, pid: int) -> None:
        """A restore (or cold start) gave the init a new host PID: follow it."""
        container.init.pid = pid
        self._watch(container, container.init)
        if container.oom is None:  # a container that started asleep runs for the first time
            self._watch_cgroup(container)

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
        try:
            options = create_settings(req.options if req.HasField("options") else None)
        except UnsupportedOptions as exc:
            raise ttrpc.InvalidArgument(str(exc)) from exc
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
        if options.shim_cgroup:
            cgroups.join(options.shim_cgroup, os.getpid())
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
        container = Container(req.id, bundle, runc, init, spec, info, rootfs_mounted=mounted,
                              io_uid=options.io_uid, io_gid=options.io_gid,
                              no_pivot_root=options.no_pivot_root)
        checkpoint = req.checkpoint or options.criu_image_path
        incoming = await self._incoming(info, values) if managed and not checkpoint else None
        try:
            if incoming is not None:
                # sent by another node: nothing runs until the first connection restores it
                container.incoming = incoming
            elif checkpoint:
                # as runc.v2: nothing runs until Start restores the image (pid 0 until then)
                container.restore_from = RestoreRequest(
                    image_path=checkpoint, pid_file=str(bundle / "init.pid"),
                    work_path=options.criu_work_path or str(bundle / "criu-work"),
                    no_pivot_root=options.no_pivot_root)
                if self._task_checkpointer(container) is None:
                    raise ttrpc.FailedPrecondition(
                        "creating a task from a checkpoint needs CRIU: install the "
                        "zeropod-criu plugin (no plugin provides zeropod_make_task_checkpointer)")
            else:
                await self._create_init(container, options)
        except (RuncError, ttrpc.RPCError) as exc:
            if mounted:
                mounts.unmount_all(str(rootfs))
            if isinstance(exc, ttrpc.RPCError):
                raise
            raise ttrpc.Unknown(f"failed to create shim task: OCI runtime create failed: "
                                f"{exc.message}") from exc
        self.containers[req.id] = container
        if not checkpoint and incoming is None:
            self._watch(container, init)
            self._watch_cgroup(container)
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

    async def _incoming(self, info: ContainerInfo,
                        values: dict[str, object]) -> IncomingImage | None:
        """The image another node sent for this container, if a migrator says so; any
        failure of the migrator means a normal (fresh) start."""
        migrator = self.hooks.make_migrator(info, values)
        if migrator is None:
            return None
        try:
            incoming = await migrator.incoming()
        except Exception:
            log.exception("migrator failed; starting the container fresh",
                          extra={"container": info.id})
            return None
        if incoming is not None:
            log.info("starting from a migrated image, scaled down", extra={
                "container": info.id, "source": incoming.source, "ports": incoming.ports})
        return incoming

    def _start_asleep(self, container: Container) -> None:
        """Start of a container whose image arrived from another node: its stdio is wired
        (a restore replaces the pipes) but no process runs; the scaler sleeps from now on."""
        io = self._start_io(container, container.init)
        container.init.io = io
        io.close_child_ends()
        io.start_copying(asyncio.get_running_loop())

    async def _create_init(self, container: Container, options: CreateSettings) -> None:
        args = ["create", "--bundle", str(container.bundle)]
        if options.no_pivot_root:
            args.insert(1, "--no-pivot")
        if options.no_new_keyring:
            args.insert(1, "--no-new-keyring")
        args.append(container.id)
        container.init.pid = await self._spawn_with_io(container, container.init, args)

    def _watch_cgroup(self, container: Container) -> None:
        """Note where the container's processes are listed and watch its cgroup for OOMs
        (once its init runs: after create, or after the restore of a checkpoint)."""
        container.cgroup_procs = cgroups.procs_file(container.init.pid)
        container.oom = OomWatcher.for_pid(
            asyncio.get_running_loop(), container.init.pid,
            lambda: self.publisher.publish(events.TaskOOM(container_id=container.id)))

    def _task_checkpointer(self, container: Container) -> TaskCheckpointer | None:
        if container.task_checkpointer is None:
            container.task_checkpointer = self.hooks.make_task_checkpointer(
                container.info, ContainerRuntime(container))
        return container.task_checkpointer

    async def _restore_init(self, container: Container, request: RestoreRequest) -> None:
        """Start a task created from a checkpoint: restore it with fresh stdio (runc.v2's
        ``createdCheckpointState.Start``)."""
        checkpointer = self._task_checkpointer(container)
        assert checkpointer is not None  # checked at Create

        async def launch(fds: tuple[int | None, int | None, int | None], console: str,
                         pid_file: Path) -> None:
            stdio = None if fds[0] is None else StdioPipes(*fds)  # type: ignore[arg-type]
            await checkpointer.restore(replace(request, console_socket=console,
                                               pid_file=str(pid_file)), stdio)

        try:
            container.init.pid = await self._launch_with_io(container, container.init, launch)
        except CheckpointApiError as exc:
            raise ttrpc.Unknown(f"OCI runtime restore failed: {exc}") from exc
        container.restore_from = None
        self._watch(container, container.init)
        self._watch_cgroup(container)

    async def start(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container, process = self._process(req.id, req.exec_id)
        async with container.event_lock:
            if process.state is not State.CREATED:
                raise ttrpc.FailedPrecondition(
                    f"process {req.exec_id or req.id} is {process.state.name.lower()}, "
                    "not created")
            if not req.exec_id:
                if container.restore_from is not None:
                    await self._restore_init(container, container.restore_from)
                elif container.incoming is not None:
                    self._start_asleep(container)
                else:
                    try:
                        await container.runc.run("start", req.id)
                    except RuncError as exc:
                        raise ttrpc.Unknown(f"OCI runtime start failed: {exc.message}") from exc
                if process.state is State.CREATED:
                    process.state = State.RUNNING
                self.publisher.publish(events.TaskStart(container_id=req.id, pid=process.pid))
                if container.scaler is not None and process.state is State.RUNNING:
                    if container.incoming is not None and container.incoming.wake:
                        self._begin_live(container.scaler, container.incoming.ports)
                    elif container.incoming is not None:
                        await container.scaler.begin_asleep(container.incoming.ports)
                    else:
                        container.scaler.begin()
            else:
                await self._start_exec(container, process)
        return task.StartResponse(pid=process.pid)

    def _begin_live(self, scaler: Scaler, ports: tuple[int, ...]) -> None:
        """Restore a container that arrived live at once (its pages stream in meanwhile),
        after ``Start`` has answered."""
        async def wake() -> None:
            with contextlib.suppress(RestoreFailed):  # logged; the container exits
                await scaler.begin_live(ports)

        task = asyncio.get_running_loop().create_task(wake(), name=f"live-{scaler.info.id}")
        self._arrivals.add(task)
        task.add_done_callback(self._arrivals.discard)

    async def _start_exec(self, container: Container, process: Process) -> None:
        spec_file = container.bundle / f"{process.exec_id}.process.json"
        spec_file.write_text(json.dumps(process.spec))
        try:
            process.pid = await self._spawn_with_io(container, process, [
                "exec", "--detach", "--process", str(spec_file), container.id])
        except RuncError as exc:
            # It never ran: a Wait returns at once (status 0, no exit time), as runc.v2's does.
            # containerd's CRI waits for it before deleting the exec (WithProcessKill); without
            # this, ``kubectl exec <pod> -- missing-command`` hung for 60 s.
            process.state = State.STOPPED
            process.exited.set()
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
        spec["terminal"] = req.terminal  # the request decides, as in runc.v2
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
                holding = (None if container.scaler.scaled_down
                           else self.hooks.stopping_running(container.info))
                if holding is not None:
                    # a plugin moves the running app away first (live migration)
                    container.scaler.hold_awake()
                    await holding
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
        # no scale-down from now on (one in flight finishes, and the wake undoes it)
        if container.scaler is not None:
            container.scaler.set_paused(True)
        try:
            await self._wake(container, Trigger.MANUAL)
            await self._runc_or_unknown(container, "pause", req.id)
        except (ttrpc.Unknown, ttrpc.FailedPrecondition):
            if container.scaler is not None:
                container.scaler.set_paused(False)
            raise
        container.init.state = State.PAUSED
        self.publisher.publish(events.TaskPaused(container_id=req.id))
        return EMPTY()

    async def resume(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        container = self._container(req.id)
        await self._runc_or_unknown(container, "resume", req.id)
        if container.scaler is not None:
            container.scaler.set_paused(False)
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
        if process.io is not None and process.io.master is not None:
            process.io.resize(req.width, req.height)
        # without a terminal there is nothing to resize: a no-op, as in runc.v2
        return EMPTY()

    async def checkpoint(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        """containerd's checkpoint of a task (``ctr c checkpoint``, the kubelet's checkpoint
        API): the image goes to ``req.path``, which containerd then stores.

        A sleeping container is woken first, so the image is always of the live process, and
        the scale-down lock is held meanwhile so that no scale-down runs in between.
        """
        container = self._container(req.id)
        try:
            request = checkpoint_settings(req.options if req.HasField("options") else None)
        except UnsupportedOptions as exc:
            raise ttrpc.InvalidArgument(str(exc)) from exc
        if container.init.state not in (State.RUNNING, State.PAUSED):
            raise ttrpc.FailedPrecondition(f"container {req.id} is not running")
        checkpointer = self._task_checkpointer(container)
        if checkpointer is None:
            raise ttrpc.FailedPrecondition(
                "checkpointing needs CRIU: install the zeropod-criu plugin (no plugin "
                "provides zeropod_make_task_checkpointer)")
        request = replace(request, image_path=req.path or request.image_path)
        await self._wake(container, Trigger.MANUAL)
        scaler = container.scaler
        lock = scaler.lock if scaler is not None else contextlib.nullcontext()
        async with lock:
            try:
                await checkpointer.checkpoint(request)
            except CheckpointApiError as exc:
                raise ttrpc.Unknown(str(exc)) from exc
        log.info("checkpointed through the API", extra={
            "container": req.id, "path": request.image_path, "exit": request.exit})
        return EMPTY()

    async def update(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        """Resources of a running container change at once (``runc update``); a sleeping
        container keeps the last Update and gets it right after its restore."""
        container = self._container(req.id)
        if container.scaler is not None:
            try:
                resources = json.loads(req.resources.value or b"{}")
            except ValueError as exc:
                raise ttrpc.InvalidArgument(f"update of {req.id}: resources are not "
                                            f"JSON LinuxResources: {exc}") from exc
            if await container.scaler.update_resources(resources):
                return EMPTY()
        await self._runc_update(container, req.resources.value)
        return EMPTY()

    async def _runc_update(self, container: Container, resources: bytes) -> None:
        try:
            await container.runc.run("update", "--resources", "-", container.id,
                                     input=resources)
        except RuncError as exc:
            raise ttrpc.Unknown(exc.message) from exc

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
