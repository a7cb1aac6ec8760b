"""The processes a shim runs for containerd: a container's init and its execs.

A :class:`Process` records what containerd can ask about (state, PID, exit status, stdio) and
offers an ``exited`` event that ``Wait`` awaits. Exits arrive from the reaper; the output pumps
are drained before the exit is made visible, so ``ctr run`` prints everything the process
wrote before it reports the exit code.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zeropod_core.model import ContainerInfo
from zeropod_core.providers import IncomingImage, RestoreRequest, TaskCheckpointer

from .oom import OomWatcher

if TYPE_CHECKING:
    from .scaler import Scaler
from .reaper import Exit
from .runc import Runc
from .stdio import ProcessIO, StdioPaths

# How long an exit waits for the process's output to reach containerd. Longer only when a
# grandchild keeps the pipes open after the process itself exited.
DRAIN_TIMEOUT_S = 2.0


class State(enum.Enum):
    """containerd's ``containerd.v1.types.Status`` values (the enum numbers)."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4


@dataclass
class Process:
    """One process of a container; ``exec_id`` is "" for the container's init."""

    container_id: str
    exec_id: str
    paths: StdioPaths
    io: ProcessIO | None = None
    pid: int = 0
    state: State = State.CREATED
    exit: Exit | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # set once TaskExit was published: init's exit waits for its execs' (runc.v2's order)
    exit_published: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def exit_status(self) -> int:
        return self.exit.status if self.exit else 0

    @property
    def exited_at(self) -> float:
        return self.exit.at if self.exit else 0.0

    async def record_exit(self, exited: Exit) -> None:
        """Mark the process stopped once its output has been forwarded; its output streams
        end (EOF for the client) as soon as they are drained."""
        if self.io is not None:
            await self.io.drained(DRAIN_TIMEOUT_S)
            self.io.finish_output()
        self.exit = exited
        self.state = State.STOPPED
        self.exited.set()

    def mark_killed_without_exit(self) -> None:
        """A process that never ran (deleted in CREATED state) ends with SIGKILL's status."""
        self.exit = Exit(self.pid, 137, time.time())
        self.state = State.STOPPED
        self.exited.set()


@dataclass
class Container:
    """A container of this shim: its bundle, runc driver, init and execs."""

    id: str
    bundle: Path
    runc: Runc
    init: Process
    spec: dict[str, Any]
    info: ContainerInfo
    rootfs_mounted: bool = False
    io_uid: int = 0
    io_gid: int = 0
    no_pivot_root: bool = False
    oom: OomWatcher | None = None
    # where the container's processes are listed (read while init runs)
    cgroup_procs: Path | None = None
    scaler: Scaler | None = None
    # Create with a checkpoint: what Start restores from (None once started)
    restore_from: RestoreRequest | None = None
    task_checkpointer: TaskCheckpointer | None = None
    # Create found an image sent by another node: Start puts the container to sleep at once
    incoming: IncomingImage | None = None
    execs: dict[str, Process] = field(default_factory=dict)
    # Serialises "start + publish TaskStart" against "publish TaskExit" (events stay ordered).
    event_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def process(self, exec_id: str) -> Process | None:
        return self.init if not exec_id else self.execs.get(exec_id)
