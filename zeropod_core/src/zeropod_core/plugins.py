"""The plugin manager factory: one manager per process role, every plugin loaded in isolation.

pluggy's own ``load_setuptools_entrypoints`` lets an import error take the whole process down.
A shim must keep running when, say, the eBPF plugin cannot find libbpf, so each entry point is
loaded on its own: a failure marks that plugin *unavailable* with the reason (logged once) and
the others load normally. Which plugins load is controlled by two environment variables:

* ``ZEROPOD_LOAD_PLUGINS``: comma-separated allowlist of plugin or distribution names; set but
  empty means "no plugins" (the core's builtins still load).
* ``ZEROPOD_DISABLE_PLUGINS``: comma-separated blocklist of plugin or distribution names.
* ``ZEROPOD_TRACE_PLUGINS=1``: log every hook call at debug level.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from . import PROJECT_NAME, manager_hookspecs, shim_hookspecs
from .builtin import MANAGER_BUILTINS, SHIM_BUILTINS
from .distributions import EntryPoint, entry_points, own_version
from .model import RoleName

log = logging.getLogger("zeropod.plugins")

LOADED = "loaded"
BLOCKED = "blocked"
UNAVAILABLE = "unavailable"

_HOOKSPECS: dict[RoleName, ModuleType] = {
    RoleName.SHIM: shim_hookspecs,
    RoleName.MANAGER: manager_hookspecs,
}
_BUILTINS: dict[RoleName, tuple[str, ...]] = {
    RoleName.SHIM: SHIM_BUILTINS,
    RoleName.MANAGER: MANAGER_BUILTINS,
}


class PluginUnavailable(Exception):
    """Raise at import time when a system dependency is missing (no CRIU, no libbpf...).

    The message becomes the plugin's status in ``zeropod plugins``; the process keeps running.
    """


@dataclass
class PluginRecord:
    """One row of ``zeropod plugins``: what was found and what became of it."""

    name: str
    distribution: str
    version: str
    role: str
    hooks: list[str] = field(default_factory=list)
    status: str = LOADED
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        if self.status == UNAVAILABLE:
            row["status"] = f"{UNAVAILABLE}: {self.reason}"
        return row


class ZeropodPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers what happened to every plugin it was offered."""

    def __init__(self, role: RoleName) -> None:
        super().__init__(PROJECT_NAME)
        self.role = role
        self.records: list[PluginRecord] = []
        self.add_hookspecs(_HOOKSPECS[role])

    def hooks_of(self, plugin: object) -> list[str]:
        """Names of the hooks ``plugin`` implements, sorted."""
        return sorted(caller.name for caller in self.get_hookcallers(plugin) or [])


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _selected(names: set[str] | None, *candidates: str) -> bool:
    return names is not None and any(candidate in names for candidate in candidates)


def _unknown_hooks(pm: ZeropodPluginManager, plugin: object) -> list[str]:
    """Hook implementations of ``plugin`` that match no spec of this role (typos, wrong role)."""
    unknown = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None and not all(
            impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin
        ):
            unknown.append(caller.name)
    return unknown


def _register(
    pm: ZeropodPluginManager, plugin: object, record: PluginRecord
) -> PluginRecord:
    """Register ``plugin`` and validate it; on a validation error leave it unregistered."""
    try:
        pm.register(plugin, name=record.name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        return _unavailable(record, f"invalid plugin: {exc}")
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        pm.unregister(plugin)
        return _unavailable(record, f"implements hooks unknown to the {pm.role.value}: {unknown}")
    record.hooks = pm.hooks_of(plugin)
    record.status = LOADED
    return record


def _unavailable(record: PluginRecord, reason: str) -> PluginRecord:
    record.status, record.reason = UNAVAILABLE, reason
    log.warning(
        "plugin unavailable",
        extra={"plugin": record.name, "distribution": record.distribution, "reason": reason},
    )
    return record


def _load_entry_point(pm: ZeropodPluginManager, ep: EntryPoint, record: PluginRecord) -> None:
    try:
        plugin = ep.load()
    except PluginUnavailable as exc:
        pm.records.append(_unavailable(record, str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - any import failure must not take the process down
        pm.records.append(_unavailable(record, f"{type(exc).__name__}: {exc}"))
        return
    pm.records.append(_register(pm, plugin, record))


def _discover(role: RoleName) -> Iterable[EntryPoint]:
    seen: set[str] = set()
    for ep in sorted(entry_points(role.entry_point_group), key=lambda e: e.name):
        if ep.name not in seen:  # the first distribution on sys.path wins, as for imports
            seen.add(ep.name)
            yield ep


def make_plugin_manager(
    role: RoleName, *, autoload: bool = True, environ: Mapping[str, str] | None = None
) -> ZeropodPluginManager:
    """Build the plugin manager of one process role.

    :param role: which hookspecs and entry point group (``zeropod.shim``/``zeropod.manager``).
    :param autoload: load installed plugins from entry points (tests pass False and register
        their own objects).
    :param environ: where to read ``ZEROPOD_*`` from (default: ``os.environ``).
    """
    env = os.environ if environ is None else environ
    pm = ZeropodPluginManager(role)
    for module_name in _BUILTINS[role]:
        name = module_name.rsplit(".", 1)[-1]
        record = PluginRecord(name, "zeropod-core", own_version(), role.value)
        pm.records.append(_register(pm, importlib.import_module(module_name), record))
    if autoload:
        allow = _names(env.get("ZEROPOD_LOAD_PLUGINS"))
        block = _names(env.get("ZEROPOD_DISABLE_PLUGINS")) or set()
        for ep in _discover(role):
            dist_name = ep.distribution
            record = PluginRecord(ep.name, dist_name, ep.version, role.value)
            if _selected(block, ep.name, dist_name) or (
                allow is not None and not _selected(allow, ep.name, dist_name)
            ):
                pm.set_blocked(ep.name)
                record.status = BLOCKED
                record.reason = (
                    "ZEROPOD_DISABLE_PLUGINS" if _selected(block, ep.name, dist_name)
                    else "not in ZEROPOD_LOAD_PLUGINS"
                )
                pm.records.append(record)
                continue
            _load_entry_point(pm, ep, record)
    if env.get("ZEROPOD_TRACE_PLUGINS") == "1":
        _trace_hook_calls(pm)
    return pm


def _trace_hook_calls(pm: ZeropodPluginManager) -> None:
    def before(name: str, impls: Any, kwargs: Mapping[str, Any]) -> None:
        log.debug("hook call", extra={"hook": name, "kwargs": repr(dict(kwargs))[:500],
                                       "plugins": [i.plugin_name for i in impls]})

    def after(outcome: Any, name: str, impls: Any, kwargs: Mapping[str, Any]) -> None:
        log.debug("hook result", extra={"hook": name, "result": repr(outcome.get_result())[:500]
                                         if outcome.exception is None else None,
                                         "error": repr(outcome.exception)})

    pm.add_hookcall_monitoring(before, after)
