"""Status events to pod changes: one read-modify-write per event, in order per pod.

For each status event of a container in a Kubernetes pod the updater

1. reads the pod, lets every ``zeropod_edit_pod`` implementation change it in memory (status
   labels, the resize plugin's saved requests) and writes it back in **one** update when
   anything changed, re-reading and re-editing on a conflict;
2. asks the ``PodResizer`` (``zeropod_make_pod_resizer``, with ``--in-place-scaling``) to
   shrink or restore the container's requests;
3. calls ``zeropod_pod_updated`` (Kubernetes events).

Events of one pod are handled one after the other by one asyncio task; the blocking client
calls run in worker threads. An unreachable API costs a logged retry with a back-off (the
manager goes on); a refusal (RBAC, validation) is logged once per kind and not retried.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from zeropod_core.model import ContainerStatus, Phase
from zeropod_core.plugins import ZeropodPluginManager
from zeropod_core.providers import PodResizer

from .kube import KubeApi, KubeError

log = logging.getLogger("zeropod.manager.pods")

CONFLICT_ATTEMPTS = 10
RETRY_FIRST_S, RETRY_MAX_S, RETRY_GIVE_UP_S = 0.2, 5.0, 120.0
# Phases that change what Kubernetes shows; STOPPING's pod is going away.
HANDLED = {Phase.RUNNING, Phase.SCALED_DOWN, Phase.CHECKPOINT_FAILED, Phase.RESTORE_FAILED}


def _arguments(argnames: tuple[str, ...], **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments an implementation takes (it may take a subset of the spec's)."""
    return {name: value for name, value in kwargs.items() if name in argnames}


class PodUpdater:
    """Applies status events to pods through the plugins, in order per pod."""

    def __init__(self, kube: KubeApi, pm: ZeropodPluginManager,
                 resizer: PodResizer | None) -> None:
        self.kube, self.pm, self.resizer = kube, pm, resizer
        self._queues: dict[tuple[str, str], collections.deque[ContainerStatus]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._refusals: set[str] = set()
        self.handled = 0

    def submit(self, status: ContainerStatus) -> None:
        """Queue an event (from the event loop); no-op for containers outside a pod."""
        info = status.container
        if not info.pod_name or not info.pod_namespace or status.phase not in HANDLED:
            return
        key = (info.pod_namespace, info.pod_name)
        self._queues.setdefault(key, collections.deque()).append(status)
        if key not in self._workers:
            self._workers[key] = asyncio.get_running_loop().create_task(
                self._drain(key), name=f"pod-updater-{key[0]}/{key[1]}")

    async def idle(self) -> None:
        """Wait until every queued event is handled (tests, shutdown)."""
        while self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def _drain(self, key: tuple[str, str]) -> None:
        queue = self._queues[key]
        try:
            while queue:
                status = queue.popleft()
                try:
                    await self._handle(status)
                except KubeError as exc:
                    self._refused(status, exc)
                except Exception:
                    log.exception("handling a status event for the pod failed", extra={
                        "pod": f"{key[0]}/{key[1]}", "container": status.container.id})
                self.handled += 1
        finally:
            del self._workers[key]
            if not queue:
                self._queues.pop(key, None)

    async def _handle(self, status: ContainerStatus) -> None:
        info = status.container
        pod = await self._retrying(
            status, "update the pod", lambda: asyncio.to_thread(self._update_metadata, status))
        if pod is None:
            return
        log.info("pod updated", extra={
            "pod": f"{info.pod_namespace}/{info.pod_name}", "container": info.container_name,
            "phase": status.phase.value,
            "latency_s": round(time.time() - status.event_time, 4)})
        resizer = self.resizer
        if resizer is not None and status.phase in (Phase.RUNNING, Phase.SCALED_DOWN):
            try:
                await self._retrying(status, "resize the pod",
                                     lambda: resizer.resize(status, pod))
            except KubeError as exc:
                self._refused(status, exc)
            except Exception:  # a broken resizer must not cost the event
                log.exception("resizing the pod failed", extra={"pod": info.pod_name})
        for impl in reversed(self.pm.hook.zeropod_pod_updated.get_hookimpls()):
            kwargs = _arguments(impl.argnames, status=status, pod=pod, kube=self.kube)
            try:
                await self._retrying(status, f"run {impl.plugin_name}'s zeropod_pod_updated",
                                     functools.partial(asyncio.to_thread, impl.function,
                                                       **kwargs))
            except KubeError as exc:
                self._refused(status, exc)
            except Exception:
                log.exception("plugin hook failed", extra={"hook": "zeropod_pod_updated",
                                                           "plugin": impl.plugin_name})

    async def _retrying(self, status: ContainerStatus, what: str,
                        attempt: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``attempt()``; again, with a back-off, while the API is unreachable."""
        delay, started = RETRY_FIRST_S, time.monotonic()
        while True:
            try:
                return await attempt()
            except KubeError as exc:
                if not exc.unreachable or time.monotonic() - started > RETRY_GIVE_UP_S:
                    raise
                log.warning("Kubernetes API unavailable, retrying", extra={
                    "what": what, "pod": status.container.pod_name, "error": str(exc),
                    "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _update_metadata(self, status: ContainerStatus) -> dict[str, Any] | None:
        """GET, edit through the plugins, PUT if changed; again on a conflict."""
        info = status.container
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                pod = self.kube.get_pod(info.pod_namespace, info.pod_name)
            except KubeError as exc:
                if exc.status == 404:
                    log.info("pod gone, status event dropped", extra={
                        "pod": f"{info.pod_namespace}/{info.pod_name}"})
                    return None
                raise
            before = copy.deepcopy(pod)
            for impl in reversed(self.pm.hook.zeropod_edit_pod.get_hookimpls()):
                try:
                    impl.function(**_arguments(impl.argnames, status=status, pod=pod,
                                               kube=self.kube))
                except Exception:
                    log.exception("plugin hook failed", extra={"hook": "zeropod_edit_pod",
                                                               "plugin": impl.plugin_name})
            if pod == before:
                return pod
            try:
                return self.kube.replace_pod(pod)
            except KubeError as exc:
                if not exc.conflict:
                    raise
                log.debug("conflict updating the pod, again", extra={"pod": info.pod_name})
        raise KubeError(409, "Conflict", f"pod {info.pod_name}: still conflicting after "
                                         f"{CONFLICT_ATTEMPTS} attempts")

    def _refused(self, status: ContainerStatus, exc: KubeError) -> None:
        """Log a refusal once per reason and message shape (an RBAC rule missing, say)."""
        info = status.container
        key = f"{exc.status}:{exc.reason}:{exc.message.replace(info.pod_name, '<pod>')}"
        if key in self._refusals:
            log.debug("Kubernetes refused again", extra={"pod": info.pod_name,
                                                         "error": str(exc)})
            return
        self._refusals.add(key)
        hint = ""
        if exc.status == 403:
            hint = ("; the manager's service account lacks an RBAC rule: apply "
                    "deploy/base/rbac-kube-status.yaml (ClusterRoles zeropod:pod-updater, "
                    "zeropod:event-creator)")
        log.error("Kubernetes refused a call for a status event: %s%s", exc, hint, extra={
            "pod": f"{info.pod_namespace}/{info.pod_name}", "phase": status.phase.value,
            "status": exc.status, "reason": exc.reason})
