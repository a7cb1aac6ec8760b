"""Task API calls ``ctr`` 1.6 cannot make (kubelet's resize: ``Update``), for the tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2, empty_pb2

from zeropod_core import ttrpc
from zeropod_core.api import TASK_SERVICE, task

TASK_SERVICE_V3 = "containerd.task.v3.Task"
LINUX_RESOURCES = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


def update_resources(shim_address: str, container_id: str,
                     resources: Mapping[str, Any]) -> None:
    """Send ``containerd.task.v2.Task/Update`` with OCI ``LinuxResources`` to a shim."""
    packed = any_pb2.Any(type_url=LINUX_RESOURCES, value=json.dumps(resources).encode())

    async def call() -> None:
        async with await ttrpc.Client.connect(shim_address) as client:
            request = task.UpdateTaskRequest(id=container_id, resources=packed)
            try:
                await client.call(TASK_SERVICE, "Update", request, empty_pb2.Empty, timeout=10)
            except ttrpc.Unimplemented:  # containerd 2.x's runc shim: the same API as v3
                await client.call(TASK_SERVICE_V3, "Update", request, empty_pb2.Empty,
                                  timeout=10)

    asyncio.run(call())
