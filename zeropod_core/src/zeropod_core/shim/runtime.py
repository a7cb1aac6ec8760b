"""The shim's :class:`~zeropod_core.providers.RuntimeHandle`: what a checkpointer may use.

It lends a plugin the container's runc driver (spawned through the shim's reaper), its paths,
its current init PID and fresh stdio pipes wired to containerd's FIFOs, without exposing the
shim's internals.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from zeropod_core.model import ContainerInfo
from zeropod_core.providers import RuncResult, StdioPipes

from .process import Container
from .runc import Runc, RuncError


async def runc_result(runc: Runc, *args: str, stdio: StdioPipes | None = None,
                      timeout_s: float | None = None, netns: str | None = None) -> RuncResult:
    """Run ``runc <args>`` and answer as :meth:`RuntimeHandle.runc` does (no exception)."""
    fds = (stdio.stdin, stdio.stdout, stdio.stderr) if stdio else (None, None, None)
    try:
        await runc.run(*args, stdio=fds, timeout_s=timeout_s, netns=netns)
    except RuncError as exc:
        return RuncResult(exc.returncode, exc.message)
    return RuncResult(0, "")


class ContainerRuntime:
    """RuntimeHandle over one container of this shim."""

    def __init__(self, container: Container) -> None:
        self._container = container

    @property
    def container(self) -> ContainerInfo:
        return self._container.info

    @property
    def bundle(self) -> Path:
        return self._container.bundle

    @property
    def runc_root(self) -> Path:
        return self._container.runc.root

    @property
    def init_pid(self) -> int:
        return self._container.init.pid

    async def runc(self, *args: str, stdio: StdioPipes | None = None,
                   timeout_s: float | None = None, netns: str | None = None) -> RuncResult:
        return await runc_result(self._container.runc, *args, stdio=stdio, timeout_s=timeout_s,
                                 netns=netns)

    def new_stdio(self) -> StdioPipes:
        io = self._container.init.io
        if io is None:
            raise RuntimeError(f"container {self._container.id} has no stdio to rewire")
        stdin, stdout, stderr = io.replace_pipes(asyncio.get_running_loop())
        return StdioPipes(stdin, stdout, stderr)
