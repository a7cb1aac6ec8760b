"""A containerd gRPC client for the lab that drives tasks the way containerd's own clients do.

``ctr`` hides what real clients (containerd's Go client, the CRI plugin behind the kubelet)
depend on: they make the stdio FIFOs themselves, open their read ends *before* the task is
created, wait for the process's exit and then for **EOF on its output FIFOs** before they
delete it (the CRI plugin answers ``kubectl exec`` only after that EOF). This client does the
same through containerd's gRPC Tasks API, so the conformance suite can hold both runtimes to it.

Containers themselves are made with ``ctr containers create`` (snapshot + spec), then their
spec is adjusted here (command, the lab's cgroup parent, user) with ``Containers.Update``:
see :class:`ApiContainers`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2
from google.protobuf.message import Message

from zeropod_core.api import containers_service, snapshots_service, tasks_service

if TYPE_CHECKING:
    from .containerd import PrivateContainerd

PROCESS_SPEC = "types.containerd.io/opencontainers/runtime-spec/1/Process"
CHECKPOINT_MEDIA_TYPE = "application/vnd.containerd.container.criu.checkpoint.criu.tar"


@dataclass
class Fifos:
    """A process's stdio FIFOs, created and opened by the client as containerd's ``cio`` does:
    output read ends opened non-blocking before the task exists, no stderr FIFO for a
    terminal (its path is still sent)."""

    directory: Path
    name: str
    terminal: bool = False
    stdin: bool = False
    _fds: dict[str, int] = field(default_factory=dict)

    def path(self, stream: str) -> str:
        return str(self.directory / f"{self.name}-{stream}")

    def __post_init__(self) -> None:
        streams = ["stdout"] + ([] if self.terminal else ["stderr"]) + \
            (["stdin"] if self.stdin else [])
        for stream in streams:
            os.mkfifo(self.path(stream), 0o600)
        for stream in streams:
            # stdin: read-write so that opening does not wait for the shim (cio opens it async)
            flags = os.O_RDWR if stream == "stdin" else os.O_RDONLY | os.O_NONBLOCK
            self._fds[stream] = os.open(self.path(stream), flags | os.O_CLOEXEC)

    @property
    def paths(self) -> tuple[str, str, str]:
        return (self.path("stdin") if self.stdin else "", self.path("stdout"),
                self.path("stderr"))

    def write_stdin(self, data: bytes) -> None:
        os.write(self._fds["stdin"], data)

    def end_stdin(self) -> None:
        """Close the client's end of the stdin FIFO (cio does, when its input ends)."""
        with contextlib.suppress(KeyError, OSError):
            os.close(self._fds.pop("stdin"))

    def read_until_eof(self, stream: str, timeout: float) -> tuple[bytes, bool]:
        """Read ``stream`` until EOF; returns the bytes and whether EOF came in time."""
        fd = self._fds[stream]
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b"".join(chunks), False
            ready, _, _ = select.select([fd], [], [], min(left, 0.1))
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                return b"".join(chunks), True
            chunks.append(data)

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


class ContainerdClient:
    """containerd's gRPC API for one namespace (the methods a task's life needs)."""

    def __init__(self, address: Path, namespace: str) -> None:
        self.namespace = namespace
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self._fifo_dir = Path(tempfile.mkdtemp(prefix="zeropod-grpc-fifos-"))

    def close(self) -> None:
        self.channel.close()
        shutil.rmtree(self._fifo_dir, ignore_errors=True)

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, service: str, method: str, request: Message, response: type[Message],
              timeout: float = 60) -> Any:
        stub: Callable[..., Any] = self.channel.unary_unary(
            f"/{service}/{method}", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString)
        return stub(request, metadata=[("containerd-namespace", self.namespace)],
                    timeout=timeout)

    def _tasks(self, method: str, request: Message, response: type[Message] = empty_pb2.Empty,
               timeout: float = 60) -> Any:
        return self._call("containerd.services.tasks.v1.Tasks", method, request, response,
                          timeout)

    # --- containers --------------------------------------------------------------------

    def container(self, container_id: str) -> Any:
        return self._call("containerd.services.containers.v1.Containers", "Get",
                          containers_service.GetContainerRequest(id=container_id),
                          containers_service.GetContainerResponse).container

    def update_spec(self, container_id: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Read the container's OCI spec, let ``change`` edit it, write it back."""
        record = self.container(container_id)
        spec = json.loads(record.spec.value)
        change(spec)
        record.spec.value = json.dumps(spec).encode()
        self._call("containerd.services.containers.v1.Containers", "Update",
                   containers_service.UpdateContainerRequest(
                       container=record, update_mask=field_mask_pb2.FieldMask(paths=["spec"])),
                   containers_service.UpdateContainerResponse)

    def rootfs(self, container_id: str) -> list[Any]:
        """The container's rootfs mounts, from its snapshot (what the Go client sends)."""
        record = self.container(container_id)
        return list(self._call("containerd.services.snapshots.v1.Snapshots", "Mounts",
                               snapshots_service.MountsRequest(
                                   snapshotter=record.snapshotter, key=record.snapshot_key),
                               snapshots_service.MountsResponse).mounts)

    # --- tasks ---------------------------------------------------------------------------

    def fifos(self, name: str, *, terminal: bool = False, stdin: bool = False) -> Fifos:
        return Fifos(self._fifo_dir, name, terminal=terminal, stdin=stdin)

    def create_task(self, container_id: str, fifos: Fifos, *, checkpoint: Any = None,
                    options: any_pb2.Any | None = None) -> int:
        stdin, stdout, stderr = fifos.paths
        request = tasks_service.CreateTaskRequest(
            container_id=container_id, rootfs=self.rootfs(container_id), stdin=stdin,
            stdout=stdout, stderr=stderr, terminal=fifos.terminal, checkpoint=checkpoint,
            options=options)
        return int(self._tasks("Create", request, tasks_service.CreateTaskResponse).pid)

    def start(self, container_id: str, exec_id: str = "") -> int:
        return int(self._tasks("Start", tasks_service.StartRequest(
            container_id=container_id, exec_id=exec_id), tasks_service.StartResponse).pid)

    def exec(self, container_id: str, exec_id: str, args: list[str], fifos: Fifos) -> None:
        """Add an exec whose process spec is the container's with ``args`` (as ctr and the
        CRI plugin build it)."""
        spec = json.loads(self.container(container_id).spec.value)["process"]
        spec["args"] = args
        spec["terminal"] = fifos.terminal
        stdin, stdout, stderr = fifos.paths
        self._tasks("Exec", tasks_service.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, stdin=stdin, stdout=stdout,
            stderr=stderr, terminal=fifos.terminal,
            spec=any_pb2.Any(type_url=PROCESS_SPEC, value=json.dumps(spec).encode())))

    def wait(self, container_id: str, exec_id: str = "", timeout: float = 60) -> int:
        return int(self._tasks("Wait", tasks_service.WaitRequest(
            container_id=container_id, exec_id=exec_id), tasks_service.WaitResponse,
            timeout=timeout).exit_status)

    def get(self, container_id: str, exec_id: str = "") -> Any:
        return self._tasks("Get", tasks_service.GetRequest(
            container_id=container_id, exec_id=exec_id), tasks_service.GetResponse).process

    def kill(self, container_id: str, signal: int, exec_id: str = "", all: bool = False) -> None:
        self._tasks("Kill", tasks_service.KillRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all))

    def resize_pty(self, container_id: str, width: int, height: int, exec_id: str = "") -> None:
        self._tasks("ResizePty", tasks_service.ResizePtyRequest(
            container_id=container_id, exec_id=exec_id, width=width, height=height))

    def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        self._tasks("CloseIO", tasks_service.CloseIORequest(
            container_id=container_id, exec_id=exec_id, stdin=True))

    def pids(self, container_id: str) -> list[int]:
        return [p.pid for p in self._tasks("ListPids", tasks_service.ListPidsRequest(
            container_id=container_id), tasks_service.ListPidsResponse).processes]

    def pause(self, container_id: str) -> None:
        self._tasks("Pause", tasks_service.PauseTaskRequest(container_id=container_id))

    def resume(self, container_id: str) -> None:
        self._tasks("Resume", tasks_service.ResumeTaskRequest(container_id=container_id))

    def checkpoint(self, container_id: str, options: any_pb2.Any | None = None) -> Any:
        """``Tasks.Checkpoint``; returns the checkpoint's content descriptor (the CRIU tar)."""
        response = self._tasks("Checkpoint", tasks_service.CheckpointTaskRequest(
            container_id=container_id, options=options), tasks_service.CheckpointTaskResponse,
            timeout=120)
        return next(d for d in response.descriptors if d.media_type == CHECKPOINT_MEDIA_TYPE)

    def delete_process(self, container_id: str, exec_id: str) -> Any:
        return self._tasks("DeleteProcess", tasks_service.DeleteProcessRequest(
            container_id=container_id, exec_id=exec_id), tasks_service.DeleteResponse)

    def delete(self, container_id: str) -> Any:
        return self._tasks("Delete", tasks_service.DeleteTaskRequest(
            container_id=container_id), tasks_service.DeleteResponse)

    def remove_task(self, container_id: str) -> None:
        """Kill and delete the container's task if it has one (errors ignored)."""
        with contextlib.suppress(grpc.RpcError):
            self.kill(container_id, 9, all=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.get(container_id).status == 3:  # STOPPED
                    break
            except grpc.RpcError:
                break
            time.sleep(0.02)
        with contextlib.suppress(grpc.RpcError):
            self.delete(container_id)


@dataclass
class ApiContainers:
    """Container records for tasks the test drives itself through :class:`ContainerdClient`.

    ``ctr containers create`` makes the snapshot and the spec (ctr 1.6 takes no command there),
    then the spec gets the command, the lab's cgroup parent and the user. :meth:`remove_all`
    deletes tasks and records.
    """

    daemon: PrivateContainerd
    client: ContainerdClient
    made: list[str] = field(default_factory=list)

    def create(self, image: str, command: list[str] | None = None, *, runtime: str,
               tty: bool = False, namespaces: Mapping[str, str] | None = None,
               annotations: Mapping[str, str] | None = None,
               env: Mapping[str, str] | None = None,
               user: tuple[int, int] | None = None) -> str:
        """A new container record; returns its id.

        :param namespaces: namespaces to join, e.g. ``{"network": <netns path>}``.
        """
        container_id = f"gc-{secrets.token_hex(4)}"
        args = ["containers", "create", "--runtime", runtime]
        if tty:
            args.append("--tty")
        for kind, path in (namespaces or {}).items():
            args += ["--with-ns", f"{kind}:{path}"]
        for key, value in (annotations or {}).items():
            args += ["--annotation", f"{key}={value}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        self.daemon.ctr(*args, image, container_id)
        self.made.append(container_id)
        cgroup = f"/{self.daemon.cgroup_parent}/{container_id}"

        def adjust(spec: dict[str, Any]) -> None:
            if command:
                spec["process"]["args"] = command
            spec["linux"]["cgroupsPath"] = cgroup
            if user is not None:
                spec["process"]["user"] = {"uid": user[0], "gid": user[1]}

        self.client.update_spec(container_id, adjust)
        return container_id

    def remove_all(self) -> None:
        for container_id in reversed(self.made):
            self.client.remove_task(container_id)
            self.daemon.ctr("containers", "delete", container_id, check=False)
        self.made.clear()
