"""Benchmark: a manager scrape with 100 registered containers, and the manager's memory.

Simulated shims (this is the one place where shims are simulated): one process serves the
real node API protocol (``zeropod.shim.v1.Shim`` over ttrpc) on 100 sockets, each reporting
one container with the metrics plugin's real samples (a few checkpoints and restores). The real
``zeropod-manager`` discovers them; we time ``GET /metrics`` (which refreshes every shim first)
and read the manager's RSS.

    .venv/bin/python benchmarks/manager_scrape.py [--shims 100] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from zeropod_metrics import shim_plugin

from zeropod_core import ttrpc
from zeropod_core.api import ZEROPOD_SHIM_SERVICE, zeropod_shim
from zeropod_core.lab.manager import LabManager
from zeropod_core.model import ContainerInfo, Outcome
from zeropod_core.shim.node_api import sample_message


class FakeShim:
    """The node API of a shim with one container that checkpointed and restored a bit."""

    def __init__(self, index: int) -> None:
        self.info = ContainerInfo(id=f"sim-{index:03d}", bundle="/b", namespace="k8s.io",
                                  pod_name=f"pod-{index // 3}", pod_namespace="bench",
                                  container_name=f"app-{index % 3}")
        shim_plugin.zeropod_container_created(container=self.info)
        for duration in (0.05, 0.08, 0.3):
            shim_plugin.zeropod_after_checkpoint(container=self.info,
                                                 outcome=Outcome(ok=True, duration_s=duration))
            shim_plugin.zeropod_after_restore(container=self.info,
                                              outcome=Outcome(ok=True, duration_s=duration))

    async def metrics(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        response = zeropod_shim.MetricsResponse()
        response.metrics.add(
            id=self.info.id, name=self.info.container_name, pod_name=self.info.pod_name,
            pod_namespace=self.info.pod_namespace, running=True,
            samples=[sample_message(m) for m in
                     shim_plugin.zeropod_collect_metrics(container=self.info)])
        return response

    async def get_status(self, ctx: ttrpc.CallContext, req: Any) -> Any:
        return zeropod_shim.ContainerStatus(id=self.info.id, phase="RUNNING")

    async def subscribe_status(self, ctx: ttrpc.CallContext, req: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield zeropod_shim.ContainerStatus()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status
                    if line.startswith("VmRSS")) / 1024


async def run(shims: int, scrapes: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="zeropod-bench-manager-"))
    socket_dir = work / "s"
    socket_dir.mkdir()
    servers = []
    try:
        for index in range(shims):
            server = ttrpc.Server()
            server.register(ZEROPOD_SHIM_SERVICE, ttrpc.service_methods(
                zeropod_shim.DESCRIPTOR.services_by_name["Shim"], FakeShim(index)))
            await server.serve_unix(socket_dir / f"shim-{index:03d}.sock")
            servers.append(server)
        manager = await asyncio.to_thread(LabManager.start, socket_dir, work)
        try:
            deadline = time.monotonic() + 30
            while True:
                status = json.loads(await asyncio.to_thread(manager.get, "/status"))
                if len(status["containers"]) >= shims or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            registered = len(status["containers"])
            durations, size = [], 0
            for _ in range(scrapes):
                start = time.monotonic()
                body = await asyncio.to_thread(manager.get, "/metrics")
                durations.append(time.monotonic() - start)
                size = len(body)
            series = sum(1 for line in body.decode().splitlines()
                         if line and not line.startswith("#"))
            rss = _rss_mib(manager.process.pid)
        finally:
            manager.stop()
    finally:
        for server in servers:
            await server.shutdown(grace=0.1)
        shutil.rmtree(work, ignore_errors=True)
    ordered = sorted(durations)
    print(f"containers registered: {registered} (of {shims} simulated shims)")
    print(f"GET /metrics over {scrapes} scrapes: median {statistics.median(durations) * 1e3:.1f}"
          f" ms, p95 {ordered[round(0.95 * (len(ordered) - 1))] * 1e3:.1f} ms, max "
          f"{ordered[-1] * 1e3:.1f} ms ({size} bytes, {series} samples)")
    print(f"manager RSS after the scrapes: {rss:.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shims", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.shims, args.scrapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
