"""The scale-to-zero state machine of one container (DESIGN.md, "Container states").

::

    RUNNING --idle for scaledown-duration--> CHECKPOINTING --ok--> SCALED_DOWN
       ^                                        | fail: RUNNING again, error recorded, retried
       |                                        |       with a back-off; after 3 failures in a
       |                                        |       row later scale-downs kill instead
    RESTORING <--first connection or exec-- SCALED_DOWN
       | fail: cold start from the bundle; if that fails the container exits(1)

One lock per container serialises checkpoint and restore. The redirect is turned on before
the checkpoint starts (connections that arrive during the dump wait in the activator) and off
only after the restored process runs. The exit of the checkpointed process is swallowed: to
containerd the container stays running, with its last PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zeropod_core import config as cfg
from zeropod_core.activator import Activator, ActivatorSettings
from zeropod_core.hooks import ShimHooks
from zeropod_core.model import ContainerInfo, ContainerStatus, Outcome, Phase, Trigger
from zeropod_core.ports import listening_ports
from zeropod_core.providers import (
    ActivityTracker,
    Checkpointer,
    LiveCheckpointer,
    Redirector,
    RestoredProcess,
)

log = logging.getLogger("zeropod.scaler")

PORT_DETECTION_LIMIT_S = 300.0
# The one-time set-up (port detection, the eBPF loader helper: a process of ~0.3 s CPU) waits
# this long (at most a quarter of the scale-down duration) so it does not compete with the
# app's own start-up; activity before it is covered by the timer's start anyway.
SETUP_DELAY_S = 1.0
EXIT_WAIT_S = 5.0
# A failed checkpoint is retried at later scale-downs, each after a longer wait (the
# scale-down duration doubled per failure, at most RETRY_BACKOFF_MAX_S); after this many
# failures in a row the container is killed on scale-down instead (state lost on wake).
CHECKPOINT_ATTEMPTS = 3
RETRY_BACKOFF_MAX_S = 600.0


@dataclass(frozen=True)
class ScalerSettings:
    """A container's scale-to-zero settings, from its annotations."""

    scaledown_s: float
    ports: tuple[int, ...] | None
    checkpointing: bool
    activator: ActivatorSettings

    @classmethod
    def from_config(cls, values: Mapping[str, object], names: Sequence[str]) -> ScalerSettings:
        """Settings for the container known as any of ``names`` (CRI name, id)."""
        ports_map = values.get(cfg.PORTS_MAP)
        ports = None
        if isinstance(ports_map, dict):
            ports = next((tuple(ports_map[n]) for n in names if n in ports_map), None)
        return cls(
            scaledown_s=_number(values, cfg.SCALEDOWN_DURATION, 0.0),
            ports=ports,
            checkpointing=not values.get(cfg.DISABLE_CHECKPOINTING),
            activator=ActivatorSettings(
                probe_detection=not values.get(cfg.DISABLE_PROBE_DETECTION),
                probe_buffer_size=int(_number(values, cfg.PROBE_BUFFER_SIZE, 1024)),
                connect_timeout_s=_number(values, cfg.CONNECT_TIMEOUT, 5.0),
                proxy_timeout_s=_number(values, cfg.PROXY_TIMEOUT, 0.0),
            ))


def _number(values: Mapping[str, object], key: str, default: float) -> float:
    value = values.get(key)
    return float(value) if isinstance(value, int | float) else default


class HandOverRefused(RuntimeError):
    """A live migration the container cannot do (not running, no live checkpointer)."""


class RestoreFailed(RuntimeError):
    """Neither the restore nor the cold start brought the container back."""


class Scaler:
    """Scales one container to zero when idle and back on the next connection or exec."""

    def __init__(self, *, info: ContainerInfo, init_pid: Callable[[], int],
                 settings: ScalerSettings,
                 checkpointer: Checkpointer, fallback: Checkpointer,
                 redirector: Redirector | None, tracker: ActivityTracker | None,
                 hooks: ShimHooks, adopt: Callable[[int], None],
                 give_up: Callable[[int], None],
                 apply_update: Callable[[Mapping[str, Any]], Awaitable[None]]) -> None:
        """:param info: the container.
        :param init_pid: its init's current host PID (it changes on every restore).
        :param adopt: called with the new PID after a restore (the shim watches it).
        :param give_up: called with an exit status when the container cannot come back.
        :param apply_update: applies OCI resources to the running container (``runc
            update``); used for the last ``Update`` that arrived while it slept.

        The scaler knows the container only through these, so it does not depend on the
        shim's process model (which refers to its scaler)."""
        self.info, self._init_pid, self.settings, self.hooks = info, init_pid, settings, hooks
        self.checkpointer, self.fallback = checkpointer, fallback
        self.redirector, self.tracker = redirector, tracker
        self._adopt, self._give_up, self._apply_update = adopt, give_up, apply_update
        # the last resource Update that arrived while asleep, applied right after the restore
        self.pending_update: Mapping[str, Any] | None = None
        self.phase = Phase.RUNNING
        self.ports: list[int] = []
        self.activator: Activator | None = None
        self.lock = asyncio.Lock()
        self.running_execs = 0
        # paused by the API (Pause/Resume): never scaled down meanwhile (a restore would
        # bring it back running, behind the back of a client that paused it)
        self.paused = False
        self.last_checkpoint: Outcome | None = None
        self.last_restore: Outcome | None = None
        self.last_checkpoint_at = 0.0  # time.time() of the last successful checkpoint
        self.last_restore_at = 0.0
        self.checkpoint_errors = 0
        self.failures_in_a_row = 0
        self._retry_at = 0.0  # time.monotonic() before which no checkpoint is retried
        self.restore_errors = 0
        self.status_listeners: list[Callable[[ContainerStatus], None]] = []
        self._baseline = time.monotonic()
        self._timer: asyncio.Task[None] | None = None
        self._setup: asyncio.Task[None] | None = None
        self._expected_exits: dict[int, asyncio.Future[None]] = {}
        self._restoring: asyncio.Task[None] | None = None
        self._stopped = False
        # the container moved live to another node (hand_over): never restored here
        self.handed_over = False

    # --- wiring ------------------------------------------------------------------------------

    def begin(self) -> None:
        """The container's init was started: find its ports, start tracking, arm the timer."""
        self._setup = asyncio.get_running_loop().create_task(
            self._set_up(), name=f"scaler-setup-{self.info.id}")
        self._setup.add_done_callback(_log_failure)

    async def _set_up(self) -> None:
        await asyncio.sleep(min(SETUP_DELAY_S, self.settings.scaledown_s / 4))
        self.ports = list(self.settings.ports or await self._detect_ports())
        log.info("scale-to-zero on", extra={
            "container": self.info.id, "ports": self.ports,
            "scaledown_s": self.settings.scaledown_s,
            "checkpointer": type(self.checkpointer).__name__})
        if self.tracker is not None and self.ports:
            await self.tracker.track(self.ports)
        if self.redirector is not None and self.ports:
            await self._start_activator(self.redirector)
        else:
            log.warning("no redirector (or no ports): waking on traffic is off; the container "
                        "scales down on a plain timer and wakes only through exec",
                        extra={"container": self.info.id})
        self.arm()

    async def begin_asleep(self, ports: Sequence[int]) -> None:
        """The container starts scaled down from an image another node sent (nothing runs):
        the activator listens on ``ports`` (the annotation's ports win) with the redirect on
        when this returns, so no connection after ``Start`` is refused; the first connection
        or exec restores it. The idle timer starts after that."""
        self.phase = Phase.SCALED_DOWN
        self.ports = list(self.settings.ports or ports)
        await self._set_up_asleep()

    async def begin_live(self, ports: Sequence[int]) -> None:
        """The container arrived live from another node (nothing runs yet, its pages are
        still on the source): restore it at once, then scale to zero as after a start. No
        activator first: the app answers itself within the restore's time."""
        self.phase = Phase.SCALED_DOWN
        self.ports = list(self.settings.ports or ports)
        await self.restore(Trigger.MIGRATION)
        if self.phase is Phase.RUNNING:
            self.begin()

    async def _set_up_asleep(self) -> None:
        async with self.lock:  # a wake-up by exec waits until the redirect is in place
            if self.tracker is not None and self.ports:
                await self.tracker.track(self.ports)
            if self.redirector is not None and self.ports:
                try:
                    await self._start_activator(self.redirector)
                    await self.redirector.redirect(self.ports)
                except Exception:  # Start must not fail: an exec still wakes it
                    log.exception("cannot redirect the ports of a container that arrived "
                                  "asleep: it wakes only through exec",
                                  extra={"container": self.info.id})
            else:
                log.warning("no redirector (or no ports): a container that arrives asleep "
                            "wakes only through exec", extra={"container": self.info.id})
            log.info("scaled down from a migrated image", extra={
                "container": self.info.id, "ports": self.ports})
            self._publish(Phase.SCALED_DOWN)

    async def _start_activator(self, redirector: Redirector) -> None:
        self.activator = Activator(
            netns_path=self.info.netns_path,
            ports=[(p, redirector.activator_port(p)) for p in self.ports],
            restore=lambda: self.restore(Trigger.CONNECTION),
            classify=lambda peek: self.hooks.classify_connection(self.info, peek),
            settings=self.settings.activator)
        await self.activator.start()

    async def _detect_ports(self) -> list[int]:
        """Poll /proc until the app listens (it may take a while to start)."""
        delay, deadline = 0.1, time.monotonic() + PORT_DETECTION_LIMIT_S
        while time.monotonic() < deadline and not self._stopped:
            ports = listening_ports(self._init_pid())
            if ports:
                return ports
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        log.warning("no listening ports found", extra={"container": self.info.id})
        return []

    # --- timer ------------------------------------------------------------------------------

    def arm(self) -> None:
        """(Re)start counting idle time from now."""
        self._baseline = time.monotonic()
        if self._timer is not None:
            self._timer.cancel()
        if self._stopped or self.settings.scaledown_s <= 0:
            return
        self._timer = asyncio.get_running_loop().create_task(
            self._count_down(), name=f"scaler-timer-{self.info.id}")
        self._timer.add_done_callback(_log_failure)

    def idle_for(self) -> float:
        """Seconds since the last activity on the ports (or since start/restore)."""
        last = self._baseline
        if self.tracker is not None:
            seen = self.tracker.last_activity()
            if seen is not None:
                last = max(last, seen)
        return time.monotonic() - last

    async def _count_down(self) -> None:
        delay = self.settings.scaledown_s
        while True:
            await asyncio.sleep(delay)
            idle = self.idle_for()
            busy = self.running_execs or self.paused or (
                self.activator and self.activator.active_connections)
            if busy or idle < self.settings.scaledown_s:
                delay = max(self.settings.scaledown_s - idle, 0.05)
                continue
            backing_off = self._retry_at - time.monotonic()
            if backing_off > 0:
                delay = max(backing_off, 0.05)
                continue
            self._timer = None
            await self.scale_down()
            return

    # --- checkpoint -------------------------------------------------------------------------

    def _publish(self, phase: Phase, duration_s: float = 0.0, log_tail: str = "") -> None:
        status = ContainerStatus(self.info, phase, time.time(), duration_s, log_tail)
        self.hooks.phase_changed(status)
        for listener in self.status_listeners:
            listener(status)

    def claims_exit(self, pid: int) -> bool:
        """Whether an exit of ``pid`` is the checkpointed process going away (swallowed)."""
        future = self._expected_exits.pop(pid, None)
        if future is None:
            return False
        if not future.done():
            future.set_result(None)
        return True

    async def _enter_dump(self) -> tuple[int, asyncio.Future[None]]:
        """Under the lock, before a dump: CHECKPOINTING, the redirect on, the plugins told,
        and the init's exit to come expected (swallowed). Returns its PID and that exit."""
        self.phase = Phase.CHECKPOINTING
        if self.redirector is not None and self.activator is not None:
            await self.redirector.redirect(self.ports)
        self.hooks.before_checkpoint(self.info)
        pid = self._init_pid()
        exited = self._expected_exits[pid] = asyncio.get_running_loop().create_future()
        return pid, exited

    async def _leave_failed_dump(self, pid: int) -> None:
        """Undo :meth:`_enter_dump` after a failed dump (the app runs on): no exit expected,
        the redirect off, RUNNING again; counted as a checkpoint error."""
        self._expected_exits.pop(pid, None)
        self.checkpoint_errors += 1
        if self.redirector is not None and self.activator is not None:
            await self.redirector.release(self.ports)
        self.phase = Phase.RUNNING

    async def scale_down(self) -> None:
        async with self.lock:
            if self.phase is not Phase.RUNNING or self._stopped or self.paused:
                return  # a paused container is armed again when it is resumed
            pid, exited = await self._enter_dump()
            started = time.monotonic()
            try:
                outcome = await self.checkpointer.checkpoint()
            except Exception as exc:
                log.exception("checkpoint raised", extra={"container": self.info.id})
                outcome = Outcome(ok=False, duration_s=time.monotonic() - started,
                                  error=str(exc))
            self.last_checkpoint = outcome
            self.hooks.after_checkpoint(self.info, outcome)
            if outcome.ok:
                self.failures_in_a_row = 0
                self.last_checkpoint_at = time.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), EXIT_WAIT_S)
                self.phase = Phase.SCALED_DOWN
                log.info("scaled down", extra={"container": self.info.id,
                                               "duration_s": round(outcome.duration_s, 4),
                                               "image_bytes": outcome.image_bytes})
                self._publish(Phase.SCALED_DOWN, outcome.duration_s)
                return
            await self._leave_failed_dump(pid)
            self._checkpoint_failed(outcome)
            self._publish(Phase.CHECKPOINT_FAILED, outcome.duration_s, outcome.log_tail)
        self.arm()

    async def hand_over(self, page_server_port: int,
                        ready: Callable[[Outcome], None]) -> Outcome:
        """Live migration's source side: a lazy dump through the checkpointer (a
        :class:`~zeropod_core.providers.LiveCheckpointer`), pages served on
        ``127.0.0.1:page_server_port``; returns when the target has every page. The container
        is then scaled down for good: its process is gone, a wake-up here does nothing (the
        app runs on the other node) and Kill ends it. Raises :class:`HandOverRefused` when the
        container is not running or its checkpointer cannot dump live; a failure before
        ``ready`` leaves the app running here."""
        live = self.checkpointer
        if not isinstance(live, LiveCheckpointer):
            raise HandOverRefused(f"container {self.info.id}: its checkpointer "
                                  f"({type(live).__name__}) cannot dump live")
        async with self.lock:
            if self.phase is not Phase.RUNNING or self._stopped:
                raise HandOverRefused(f"container {self.info.id} is {self.phase.value}, "
                                      "not running")
            if self._timer is not None:
                self._timer.cancel()
            pid, exited = await self._enter_dump()
            started = time.monotonic()
            try:
                outcome = await live.live_dump(page_server_port, ready)
            except Exception as exc:
                log.exception("live dump raised", extra={"container": self.info.id})
                outcome = Outcome(ok=False, duration_s=time.monotonic() - started,
                                  error=str(exc))
            self.last_checkpoint = outcome
            if outcome.ok:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), EXIT_WAIT_S)
                self.last_checkpoint_at = time.time()
                self.phase = Phase.SCALED_DOWN
                self.handed_over = True
                log.info("handed over live", extra={
                    "container": self.info.id, "duration_s": round(outcome.duration_s, 4)})
                self._publish(Phase.SCALED_DOWN, outcome.duration_s)
                return outcome
            await self._leave_failed_dump(pid)
            log.error("live migration failed, the app keeps running here", extra={
                "container": self.info.id, "error": outcome.error,
                "log_tail": outcome.log_tail})
            self._publish(Phase.CHECKPOINT_FAILED, outcome.duration_s, outcome.log_tail)
        self.arm()
        return outcome

    def _checkpoint_failed(self, outcome: Outcome) -> None:
        """Retry later with a back-off, or give up on checkpoints after too many failures."""
        self.failures_in_a_row += 1
        details = {"container": self.info.id, "error": outcome.error,
                   "log_tail": outcome.log_tail, "failures_in_a_row": self.failures_in_a_row}
        if self.checkpointer is self.fallback:
            log.error("scale-down failed, the app keeps running", extra=details)
            return
        if self.failures_in_a_row >= CHECKPOINT_ATTEMPTS:
            log.error("checkpoint failed %d times in a row: giving up on checkpoints, later "
                      "scale-downs kill the container (its state is lost on the next wake)",
                      self.failures_in_a_row, extra=details)
            self.checkpointer = self.fallback
            return
        backoff = min(self.settings.scaledown_s * 2 ** self.failures_in_a_row,
                      RETRY_BACKOFF_MAX_S)
        self._retry_at = time.monotonic() + backoff
        log.warning("checkpoint failed, the app keeps running; retrying after %.1f s idle "
                    "at the earliest", backoff, extra={**details, "retry_in_s": backoff})

    # --- restore ----------------------------------------------------------------------------

    async def restore(self, trigger: Trigger) -> None:
        """Bring the container back if it sleeps; concurrent callers share one restore."""
        if self.phase is Phase.RUNNING and not self.lock.locked():
            return
        if self._restoring is None or self._restoring.done():
            self._restoring = asyncio.get_running_loop().create_task(
                self._restore(trigger), name=f"scaler-restore-{self.info.id}")
        await asyncio.shield(self._restoring)

    async def _restore(self, trigger: Trigger) -> None:
        async with self.lock:
            if self.phase is not Phase.SCALED_DOWN:
                return
            if self.handed_over:
                log.warning("a wake-up of a container that moved live to another node: "
                            "nothing to restore here", extra={"container": self.info.id,
                                                              "trigger": trigger.value})
                return
            self.phase = Phase.RESTORING
            self.hooks.before_restore(self.info, trigger)
            started = time.monotonic()
            try:
                restored = await self.checkpointer.restore()
            except Exception as exc:  # noqa: BLE001 - any failure falls back to a cold start
                restored = await self._cold_start(exc, time.monotonic() - started)
            self._adopt(restored.pid)
            await self._apply_pending_update()
            if self.redirector is not None and self.activator is not None:
                await self.redirector.release(self.ports)
            self.phase = Phase.RUNNING
            self.last_restore = restored.outcome
            self.last_restore_at = time.time()
            self.hooks.after_restore(self.info, restored.outcome)
            log.info("restored", extra={"container": self.info.id, "pid": restored.pid,
                                        "trigger": trigger.value,
                                        "duration_s": round(restored.outcome.duration_s, 4)})
            self._publish(Phase.RUNNING, restored.outcome.duration_s)
        self.arm()

    async def update_resources(self, resources: Mapping[str, Any]) -> bool:
        """A resource ``Update``: kept for the restore while asleep (True), or to be applied
        now by the caller (False). Serialised with checkpoint and restore by the lock, so an
        Update is neither lost in a scale-down nor applied to a container being restored."""
        async with self.lock:
            if self.phase is not Phase.SCALED_DOWN:
                return False
            self.pending_update = self.hooks.update_while_scaled_down(self.info, resources)
            log.info("update kept for the restore while scaled down",
                     extra={"container": self.info.id, "resources": self.pending_update})
            return True

    async def _apply_pending_update(self) -> None:
        update, self.pending_update = self.pending_update, None
        if update is None:
            return
        try:
            await self._apply_update(update)
        except Exception as exc:  # noqa: BLE001 - the app runs; its old resources stay
            log.error("applying the update kept while scaled down failed", extra={
                "container": self.info.id, "resources": update, "error": str(exc)})
        else:
            log.info("applied the update kept while scaled down",
                     extra={"container": self.info.id, "resources": update})

    async def _cold_start(self, error: Exception, duration_s: float) -> RestoredProcess:
        failed = Outcome(ok=False, duration_s=duration_s, error=str(error))
        self.restore_errors += 1
        self.hooks.after_restore(self.info, failed)
        log.error("restore failed, cold-starting the container", extra={
            "container": self.info.id, "error": str(error)})
        self._publish(Phase.RESTORE_FAILED, duration_s, str(error)[-4000:])
        self.checkpointer = self.fallback
        try:
            return await self.fallback.restore()
        except Exception as exc:
            log.error("cold start failed too: the container exits",
                      extra={"container": self.info.id, "error": str(exc)})
            self._stopped = True
            self.phase = Phase.STOPPING
            self._give_up(1)
            raise RestoreFailed(f"restore failed ({error}) and cold start failed ({exc})") \
                from exc

    # --- execs ------------------------------------------------------------------------------

    def exec_started(self) -> None:
        self.running_execs += 1

    def set_paused(self, paused: bool) -> None:
        """The API paused or resumed the container; idle time counts again from a resume."""
        self.paused = paused
        if not paused and self.phase is Phase.RUNNING:
            self.arm()

    def hold_awake(self) -> None:
        """A stop is held while plugins move the app away (live migration): no scale-down
        from now on, the app must still be running when the move starts."""
        self.paused = True

    def exec_exited(self) -> None:
        self.running_execs = max(0, self.running_execs - 1)
        if not self.running_execs and self.phase is Phase.RUNNING:
            self.arm()

    # --- the end ----------------------------------------------------------------------------

    @property
    def scaled_down(self) -> bool:
        return self.phase is Phase.SCALED_DOWN

    async def stop(self) -> bool:
        """No more scaling (Kill or the app exited); True if the container was scaled down."""
        self._stopped = True
        for task in (self._timer, self._setup):
            if task is not None:
                task.cancel()
        async with self.lock:  # let a checkpoint or restore in flight finish
            was_down = self.phase is Phase.SCALED_DOWN
            self.phase = Phase.STOPPING
        if self.activator is not None:
            await self.activator.close()
            self.activator = None
        if was_down and self.redirector is not None:
            await self.redirector.release(self.ports)
        # The container ends: an image is of no use any more, and whatever the checkpointer
        # holds ready (a prepared CRIU in the container's cgroups for a wake, or one in the
        # pod's network namespace for the next dump) must go now, not at Delete, or the pod's
        # cgroup and namespace cannot go and the pod lingers. Plugins may take the image of a
        # sleeping container first (a migration's hand-over).
        if was_down:
            self.hooks.stopping_asleep(self.info)
        with contextlib.suppress(Exception):
            await self.checkpointer.discard()
        self._publish(Phase.STOPPING)
        return was_down

    async def close(self) -> None:
        """The container is deleted: release the redirector, tracker and images."""
        if not self._stopped:
            await self.stop()
        for closer in (self.tracker, self.redirector):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.close()
        with contextlib.suppress(Exception):
            await self.checkpointer.discard()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("scaler task failed", exc_info=task.exception(),
                  extra={"task": task.get_name()})
