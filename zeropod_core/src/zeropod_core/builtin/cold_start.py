"""The fallback checkpointer: kill on scale-down, cold start from the bundle on wake-up.

Used when no checkpoint plugin is installed, when ``disable-checkpointing`` is set, after a
checkpoint failed once, and as the second chance after a failed restore. The app's memory
state is lost, which is exactly what the criu plugin exists to avoid.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from zeropod_core import hookimpl
from zeropod_core.model import ContainerInfo, Outcome
from zeropod_core.providers import RestoredProcess, RuntimeHandle


class ColdStartError(RuntimeError):
    """runc could not start the container again."""


class ColdStart:
    """Checkpointer that forgets the process and starts the container anew."""

    def __init__(self, runtime: RuntimeHandle) -> None:
        self.runtime = runtime

    async def checkpoint(self) -> Outcome:
        started = time.monotonic()
        result = await self.runtime.runc("delete", "--force", self.runtime.container.id)
        return Outcome(ok=result.returncode == 0, duration_s=time.monotonic() - started,
                       error=result.error)

    async def restore(self) -> RestoredProcess:
        started = time.monotonic()
        container_id = self.runtime.container.id
        pid_file = Path(self.runtime.bundle) / "init.pid"
        stdio = self.runtime.new_stdio()
        try:
            created = await self.runtime.runc("create", "--bundle", str(self.runtime.bundle),
                                              "--pid-file", str(pid_file), container_id,
                                              stdio=stdio)
        finally:
            stdio.close()
        if created.returncode != 0:
            raise ColdStartError(f"runc create failed: {created.error}")
        started_run = await self.runtime.runc("start", container_id)
        if started_run.returncode != 0:
            await self.runtime.runc("delete", "--force", container_id)
            raise ColdStartError(f"runc start failed: {started_run.error}")
        pid = int(pid_file.read_text())
        return RestoredProcess(pid, Outcome(ok=True, duration_s=time.monotonic() - started))

    async def discard(self) -> None:
        """Nothing is kept on disk."""


@hookimpl(trylast=True)
def zeropod_make_checkpointer(
    container: ContainerInfo, runtime: RuntimeHandle, config: Mapping[str, object]
) -> ColdStart:
    del container, config
    return ColdStart(runtime)
