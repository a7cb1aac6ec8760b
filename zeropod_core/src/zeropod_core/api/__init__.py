"""Protobuf messages of the containerd shim API and of zeropod's node API.

The ``.proto`` sources are in ``protos/`` (same packages, message names and field numbers as
upstream, so the bytes match containerd's); ``_pb/`` holds the code ``scripts/gen-protos``
generates from them. Use the short module names here rather than the ``_pb`` paths::

    from zeropod_core.api import task, events, typeurl

    request = task.CreateTaskRequest(id="c1", bundle="/run/...")
    envelope_event = typeurl.pack(events.TaskExit(container_id="c1", exit_status=0))

The modules are imported on first use, so importing this package (as the ttrpc package does
for its envelope messages) costs nothing until a module is needed.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from zeropod_core.api import typeurl
    from zeropod_core.api._pb.cgroups.v1 import metrics_pb2 as cgroups_v1
    from zeropod_core.api._pb.containerd.events import task_pb2 as events
    from zeropod_core.api._pb.containerd.linux.runc import runc_pb2 as linux_runc
    from zeropod_core.api._pb.containerd.runc.v1 import options_pb2 as runc_options
    from zeropod_core.api._pb.containerd.services.containers.v1 import (
        containers_pb2 as containers_service,
    )
    from zeropod_core.api._pb.containerd.services.events.ttrpc.v1 import (
        events_pb2 as events_service,
    )
    from zeropod_core.api._pb.containerd.services.snapshots.v1 import (
        snapshots_pb2 as snapshots_service,
    )
    from zeropod_core.api._pb.containerd.services.tasks.v1 import tasks_pb2 as tasks_service
    from zeropod_core.api._pb.containerd.task.v2 import shim_pb2 as task
    from zeropod_core.api._pb.containerd.types import mount_pb2 as mount
    from zeropod_core.api._pb.containerd.types.task import task_pb2 as task_types
    from zeropod_core.api._pb.runtimeoptions.v1 import api_pb2 as runtime_options
    from zeropod_core.api._pb.zeropod.shim.v1 import shim_pb2 as zeropod_shim

TASK_SERVICE: Final = "containerd.task.v2.Task"
"""The service containerd calls on a shim."""
EVENTS_SERVICE: Final = "containerd.services.events.ttrpc.v1.Events"
"""The service a shim calls on containerd's ttrpc socket to publish events (method Forward)."""
ZEROPOD_SHIM_SERVICE: Final = "zeropod.shim.v1.Shim"
"""The node API a zeropod shim serves to the zeropod manager."""

_MODULES: Final = {
    "task": "zeropod_core.api._pb.containerd.task.v2.shim_pb2",
    "mount": "zeropod_core.api._pb.containerd.types.mount_pb2",
    "task_types": "zeropod_core.api._pb.containerd.types.task.task_pb2",
    "events": "zeropod_core.api._pb.containerd.events.task_pb2",
    "events_service": "zeropod_core.api._pb.containerd.services.events.ttrpc.v1.events_pb2",
    "runc_options": "zeropod_core.api._pb.containerd.runc.v1.options_pb2",
    "linux_runc": "zeropod_core.api._pb.containerd.linux.runc.runc_pb2",
    # containerd's gRPC services: only the lab's client (zeropod_core.lab.grpcclient) uses them
    "tasks_service": "zeropod_core.api._pb.containerd.services.tasks.v1.tasks_pb2",
    "containers_service": "zeropod_core.api._pb.containerd.services.containers.v1.containers_pb2",
    "snapshots_service": "zeropod_core.api._pb.containerd.services.snapshots.v1.snapshots_pb2",
    "runtime_options": "zeropod_core.api._pb.runtimeoptions.v1.api_pb2",
    "cgroups_v1": "zeropod_core.api._pb.cgroups.v1.metrics_pb2",
    "zeropod_shim": "zeropod_core.api._pb.zeropod.shim.v1.shim_pb2",
    "typeurl": "zeropod_core.api.typeurl",
}


def __getattr__(name: str) -> ModuleType:
    target = _MODULES.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(target)
    globals()[name] = module
    return module


__all__ = [
    "EVENTS_SERVICE",
    "TASK_SERVICE",
    "ZEROPOD_SHIM_SERVICE",
    "cgroups_v1",
    "containers_service",
    "events",
    "events_service",
    "linux_runc",
    "mount",
    "runc_options",
    "runtime_options",
    "snapshots_service",
    "task",
    "task_types",
    "tasks_service",
    "typeurl",
    "zeropod_shim",
]
