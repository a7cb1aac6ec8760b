"""The generated API matches upstream's schema: service and method names containerd calls,
message and package names, type URLs, and generated code that is up to date with protos/."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor

import zeropod_core.api as api
from zeropod_core.api import (
    EVENTS_SERVICE,
    TASK_SERVICE,
    ZEROPOD_SHIM_SERVICE,
    cgroups_v1,
    events,
    events_service,
    runc_options,
    runtime_options,
    task,
    task_types,
    typeurl,
    zeropod_shim,
)

REPO = Path(__file__).resolve().parents[2]

TASK_METHODS = {
    "State": ("StateRequest", "StateResponse"),
    "Create": ("CreateTaskRequest", "CreateTaskResponse"),
    "Start": ("StartRequest", "StartResponse"),
    "Delete": ("DeleteRequest", "DeleteResponse"),
    "Pids": ("PidsRequest", "PidsResponse"),
    "Pause": ("PauseRequest", "google.protobuf.Empty"),
    "Resume": ("ResumeRequest", "google.protobuf.Empty"),
    "Checkpoint": ("CheckpointTaskRequest", "google.protobuf.Empty"),
    "Kill": ("KillRequest", "google.protobuf.Empty"),
    "Exec": ("ExecProcessRequest", "google.protobuf.Empty"),
    "ResizePty": ("ResizePtyRequest", "google.protobuf.Empty"),
    "CloseIO": ("CloseIORequest", "google.protobuf.Empty"),
    "Update": ("UpdateTaskRequest", "google.protobuf.Empty"),
    "Wait": ("WaitRequest", "WaitResponse"),
    "Stats": ("StatsRequest", "StatsResponse"),
    "Connect": ("ConnectRequest", "ConnectResponse"),
    "Shutdown": ("ShutdownRequest", "google.protobuf.Empty"),
}

# message -> {field name: number}, from containerd's and zeropod's .proto files.
FIELDS: dict[str, dict[str, int]] = {
    "containerd.task.v2.CreateTaskRequest": {
        "id": 1,
        "bundle": 2,
        "rootfs": 3,
        "terminal": 4,
        "stdin": 5,
        "stdout": 6,
        "stderr": 7,
        "checkpoint": 8,
        "parent_checkpoint": 9,
        "options": 10,
        "oom_path": 11,
    },
    "containerd.task.v2.StateResponse": {
        "id": 1,
        "bundle": 2,
        "pid": 3,
        "status": 4,
        "stdin": 5,
        "stdout": 6,
        "stderr": 7,
        "terminal": 8,
        "exit_status": 9,
        "exited_at": 10,
        "exec_id": 11,
    },
    "containerd.task.v2.DeleteResponse": {"pid": 1, "exit_status": 2, "exited_at": 3},
    "containerd.task.v2.ConnectResponse": {"shim_pid": 1, "task_pid": 2, "version": 3},
    "containerd.task.v2.UpdateTaskRequest": {"id": 1, "resources": 2, "annotations": 3},
    "containerd.types.Mount": {"type": 1, "source": 2, "target": 3, "options": 4},
    "containerd.v1.types.ProcessInfo": {"pid": 1, "info": 2},
    "containerd.events.TaskExit": {
        "container_id": 1,
        "id": 2,
        "pid": 3,
        "exit_status": 4,
        "exited_at": 5,
        "exit_reason": 6,
    },
    "containerd.services.events.ttrpc.v1.Envelope": {
        "timestamp": 1,
        "namespace": 2,
        "topic": 3,
        "event": 4,
    },
    "runtimeoptions.v1.Options": {"type_url": 1, "config_path": 2, "config_body": 3},
    "io.containerd.cgroups.v1.Metrics": {
        "hugetlb": 1,
        "pids": 2,
        "cpu": 3,
        "memory": 4,
        "blkio": 5,
        "rdma": 6,
        "network": 7,
        "cgroup_stats": 8,
        "memory_oom_control": 9,
    },
    "zeropod.shim.v1.ContainerStatus": {
        "id": 1,
        "name": 2,
        "pod_name": 3,
        "pod_namespace": 4,
        "phase": 5,
        "event_time": 6,
        "event_duration": 7,
        "event_log": 8,
        "dry_run": 9,
    },
    "zeropod.shim.v1.ContainerMetrics": {
        "name": 1,
        "pod_name": 2,
        "pod_namespace": 3,
        "last_checkpoint": 4,
        "last_restore": 5,
        "last_checkpoint_duration": 6,
        "last_restore_duration": 7,
        "running": 8,
        "checkpoint_errors": 9,
        "restore_errors": 10,
        "dry_run_scale_downs": 11,
        "dry_run_restores": 12,
        "dry_run": 13,
        # zeropod-python additions, clear of upstream's numbers
        "id": 100,
        "samples": 101,
        "image_bytes": 102,
        "last_wake_latency": 103,
    },
    "zeropod.shim.v1.Sample": {
        "name": 1,
        "kind": 2,
        "value": 3,
        "labels": 4,
        "bucket_bounds": 5,
        "bucket_counts": 6,
        "count": 7,
    },
}


def _descriptor(full_name: str) -> Descriptor:
    """A message's descriptor from the pool the generated modules registered it in."""
    return descriptor_pool.Default().FindMessageTypeByName(full_name)


def test_task_service_is_what_containerd_calls() -> None:
    service = task.DESCRIPTOR.services_by_name["Task"]
    assert service.full_name == TASK_SERVICE
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    expected = {
        name: tuple(t if "." in t else f"containerd.task.v2.{t}" for t in types)
        for name, types in TASK_METHODS.items()
    }
    assert methods == expected


def test_events_and_node_services() -> None:
    forward = events_service.DESCRIPTOR.services_by_name["Events"].methods_by_name["Forward"]
    assert forward.containing_service.full_name == EVENTS_SERVICE
    assert forward.input_type.full_name == "containerd.services.events.ttrpc.v1.ForwardRequest"
    shim = zeropod_shim.DESCRIPTOR.services_by_name["Shim"]
    assert shim.full_name == ZEROPOD_SHIM_SERVICE
    assert [m.name for m in shim.methods] == ["Metrics", "GetStatus", "SubscribeStatus",
                                           "LiveMigrate"]
    assert shim.methods_by_name["SubscribeStatus"].server_streaming
    assert shim.methods_by_name["LiveMigrate"].server_streaming
    assert not shim.methods_by_name["GetStatus"].server_streaming


@pytest.mark.parametrize("full_name", FIELDS)
def test_field_numbers(full_name: str) -> None:
    descriptor = _descriptor(full_name)
    assert {f.name: f.number for f in descriptor.fields} == FIELDS[full_name]


def test_enums() -> None:
    assert dict(task_types.Status.items()) == {
        "UNKNOWN": 0,
        "CREATED": 1,
        "RUNNING": 2,
        "STOPPED": 3,
        "PAUSED": 4,
        "PAUSING": 5,
    }
    assert dict(task_types.ExitReason.items()) == {"NONE": 0, "OOMKILLED": 1, "SIGNALED": 2}
    assert dict(zeropod_shim.ContainerPhase.items()) == {
        "SCALED_DOWN": 0,
        "RUNNING": 1,
        "STOPPING": 2,
        "CHECKPOINT_FAILED": 3,
        "RESTORE_FAILED": 4,
    }


def test_event_type_urls_are_containerds() -> None:
    expected = {
        events.TaskCreate: "containerd.events.TaskCreate",
        events.TaskStart: "containerd.events.TaskStart",
        events.TaskDelete: "containerd.events.TaskDelete",
        events.TaskExit: "containerd.events.TaskExit",
        events.TaskOOM: "containerd.events.TaskOOM",
        events.TaskExecAdded: "containerd.events.TaskExecAdded",
        events.TaskExecStarted: "containerd.events.TaskExecStarted",
        events.TaskPaused: "containerd.events.TaskPaused",
        events.TaskResumed: "containerd.events.TaskResumed",
        events.TaskCheckpointed: "containerd.events.TaskCheckpointed",
        runc_options.Options: "containerd.runc.v1.Options",
        runtime_options.Options: "runtimeoptions.v1.Options",
        cgroups_v1.Metrics: "io.containerd.cgroups.v1.Metrics",
    }
    for message_type, url in expected.items():
        assert typeurl.type_url(message_type) == url


def test_typeurl_pack_unpack() -> None:
    options = runc_options.Options(binary_name="runc", systemd_cgroup=True)
    packed = typeurl.pack(options)
    assert packed.type_url == "containerd.runc.v1.Options"
    assert typeurl.is_type(packed, runc_options.Options)
    assert typeurl.unpack(packed, runc_options.Options) == options
    google_style = any_pb2.Any()
    google_style.Pack(options)  # type.googleapis.com/containerd.runc.v1.Options
    assert typeurl.unpack(google_style, runc_options.Options) == options
    with pytest.raises(ValueError, match=r"runtimeoptions\.v1\.Options"):
        typeurl.unpack(packed, runtime_options.Options)


def test_api_modules_load_lazily() -> None:
    assert api.task is task
    with pytest.raises(AttributeError):
        _ = api.no_such_module


def test_generated_modules_import_by_package_path() -> None:
    generated = REPO / "zeropod_core/src/zeropod_core/api/_pb"
    for path in generated.rglob("*_pb2.py"):
        text = path.read_text()
        for line in text.splitlines():
            if line.startswith(("from ", "import ")) and "_pb2" in line:
                assert line.startswith(("from google.protobuf", "from zeropod_core.api._pb.")), (
                    f"{path.name}: {line}"
                )


@pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools is not installed"
)
def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts/gen-protos"), "--check"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
