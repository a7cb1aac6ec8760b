"""The only caller of ``pm.hook``: typed methods per hook, with the core's calling rules.

Notification hooks are called implementation by implementation, so one plugin's exception is
logged (with the plugin's name) and neither stops the others nor reaches the shim's RPC
handler. Provider hooks (firstresult) are passed straight through: a plugin that raises there
fails the container's creation, which is what a broken checkpointer should do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from .config import AnnotationRegistry
from .model import ContainerInfo, ContainerStatus, Metric, Outcome, Trigger
from .plugins import ZeropodPluginManager
from .providers import (
    ActivityTracker,
    Checkpointer,
    Migrator,
    Redirector,
    RuntimeHandle,
    TaskCheckpointer,
)

log = logging.getLogger("zeropod.hooks")


class ShimHooks:
    """Typed facade over the shim's plugin manager."""

    def __init__(self, pm: ZeropodPluginManager) -> None:
        self.pm = pm
        self._annotations: AnnotationRegistry | None = None

    def annotations(self) -> AnnotationRegistry:
        """Every plugin's annotations (collected once per process)."""
        if self._annotations is None:
            registry = AnnotationRegistry()
            self._call_each("zeropod_register_annotations", register=registry.register)
            self._annotations = registry
        return self._annotations

    def modify_spec(self, container: ContainerInfo, spec: dict[str, Any],
                    config: Mapping[str, object]) -> None:
        self._notify("zeropod_modify_spec", container=container, spec=spec, config=config)

    def _call_each(self, name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of ``name`` on its own; return the non-None results."""
        results = []
        caller = getattr(self.pm.hook, name)
        for impl in reversed(caller.get_hookimpls()):  # pluggy's order: last registered first
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception:
                log.exception("plugin hook failed",
                              extra={"hook": name, "plugin": impl.plugin_name})
                continue
            if result is not None:
                results.append(result)
        return results

    def _notify(self, name: str, **kwargs: Any) -> None:
        self._call_each(name, **kwargs)

    def container_created(self, container: ContainerInfo, config: Mapping[str, object]) -> None:
        self._notify("zeropod_container_created", container=container, config=config)

    def container_deleted(self, container: ContainerInfo) -> None:
        self._notify("zeropod_container_deleted", container=container)

    def before_checkpoint(self, container: ContainerInfo) -> None:
        self._notify("zeropod_before_checkpoint", container=container)

    def after_checkpoint(self, container: ContainerInfo, outcome: Outcome) -> None:
        self._notify("zeropod_after_checkpoint", container=container, outcome=outcome)

    def stopping_asleep(self, container: ContainerInfo) -> None:
        self._notify("zeropod_stopping_asleep", container=container)

    def stopping_running(self, container: ContainerInfo) -> Awaitable[None] | None:
        """What holds the stop of a running container: an awaitable for every plugin that
        holds it (each bounds its own wait; one that fails is logged and does not keep the
        stop from going on), or None when no plugin does."""
        holding = self._call_each("zeropod_stopping_running", container=container)
        if not holding:
            return None

        async def wait_all() -> None:
            for waiting in holding:
                try:
                    await waiting
                except Exception:
                    log.exception("plugin hook failed", extra={
                        "hook": "zeropod_stopping_running", "container": container.id})

        return wait_all()

    def before_restore(self, container: ContainerInfo, trigger: Trigger) -> None:
        self._notify("zeropod_before_restore", container=container, trigger=trigger)

    def after_restore(self, container: ContainerInfo, outcome: Outcome) -> None:
        self._notify("zeropod_after_restore", container=container, outcome=outcome)

    def phase_changed(self, status: ContainerStatus) -> None:
        self._notify("zeropod_phase_changed", status=status)

    def make_checkpointer(self, container: ContainerInfo, runtime: RuntimeHandle,
                          config: Mapping[str, object]) -> Checkpointer | None:
        result: Checkpointer | None = self.pm.hook.zeropod_make_checkpointer(
            container=container, runtime=runtime, config=config)
        return result

    def make_task_checkpointer(self, container: ContainerInfo,
                               runtime: RuntimeHandle) -> TaskCheckpointer | None:
        result: TaskCheckpointer | None = self.pm.hook.zeropod_make_task_checkpointer(
            container=container, runtime=runtime)
        return result

    def make_redirector(self, container: ContainerInfo) -> Redirector | None:
        result: Redirector | None = self.pm.hook.zeropod_make_redirector(container=container)
        return result

    def make_activity_tracker(self, container: ContainerInfo) -> ActivityTracker | None:
        result: ActivityTracker | None = self.pm.hook.zeropod_make_activity_tracker(
            container=container)
        return result

    def make_migrator(self, container: ContainerInfo,
                      config: Mapping[str, object]) -> Migrator | None:
        result: Migrator | None = self.pm.hook.zeropod_make_migrator(container=container,
                                                                     config=config)
        return result

    def update_while_scaled_down(self, container: ContainerInfo,
                                 resources: Mapping[str, Any]) -> Mapping[str, Any]:
        result: Mapping[str, Any] | None = self.pm.hook.zeropod_update_while_scaled_down(
            container=container, resources=resources)
        return resources if result is None else result

    def classify_connection(self, container: ContainerInfo, peek: bytes) -> str:
        result: str | None = self.pm.hook.zeropod_classify_connection(
            container=container, peek=peek)
        return result or "wake"

    def collect_metrics(self, container: ContainerInfo) -> list[Metric]:
        return [sample for samples in self._call_each("zeropod_collect_metrics",
                                                      container=container)
                for sample in samples]
