"""Shim-side hooks of ``zeropod-criu`` (entry point group ``zeropod.shim``).

Gives every non-sandbox container a :class:`~.checkpointer.CriuCheckpointer`, names zeropod's
CRIU configuration file in each container's spec, and prepares the node once per shim process
(CRIU's kernel-feature cache, the feature check that decides about pre-dumps). This module and
what it imports use the standard library and zeropod_core only; pycriu is imported lazily by
the feature check (once per boot and CRIU build) and when CRIU's statistics are read.

Unavailable (not an error for the shim) when there is no ``criu`` on PATH.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zeropod_core import hookimpl
from zeropod_core.config import parse_switch
from zeropod_core.model import ContainerInfo
from zeropod_core.plugins import PluginUnavailable
from zeropod_core.providers import RuntimeHandle

from .node import CriuNotFound, find_criu

try:
    CRIU = find_criu()
except CriuNotFound as _exc:
    raise PluginUnavailable(str(_exc)) from None

# Imported after the check: without CRIU the plugin should fail with the reason above.
from .checkpointer import CriuCheckpointer, remove_container_images
from .criuconf import CriuConfig, name_config_in_spec, write_config
from .features import CriuFeatures, detect_features
from .kdat import ensure_kdat_cache
from .node import NodeKey
from .orphans import write_owner
from .paths import ImagePaths, make_private_dir
from .settings import PRE_DUMP_ANNOTATION, CriuSettings
from .task_api import RuncTaskCheckpointer

log = logging.getLogger("zeropod.criu.shim")

_settings: CriuSettings | None = None
_features: CriuFeatures | None = None


def current_settings() -> CriuSettings:
    """Settings from ``zeropod_configure``, or from the environment if it was not called."""
    global _settings
    if _settings is None:
        _settings = CriuSettings.from_environ()
    return _settings


def current_features() -> CriuFeatures | None:
    """What the feature check found (None before ``zeropod_configure``)."""
    return _features


def criu_config(settings: CriuSettings) -> CriuConfig:
    return CriuConfig(network_lock=settings.network_lock)


@hookimpl
def zeropod_register_annotations(
    register: Callable[[str, Callable[[str], object], str | None, str], None],
) -> None:
    """The pre-dump switch."""
    register(PRE_DUMP_ANNOTATION, parse_switch, "false",
             "true/false: copy the memory while the app runs, then dump only the pages changed "
             "since (needs CRIU memory tracking; ignored where the kernel lacks it)")


@hookimpl
def zeropod_configure(settings: Mapping[str, str]) -> None:
    """Read the settings, write the CRIU config, prepare the kdat cache, check features.

    Runs on the shim's loop thread before any container exists: the kdat step and the feature
    check start short-lived processes and wait for them themselves.
    """
    global _settings, _features
    try:
        _settings = CriuSettings.from_mapping(settings)
    except ValueError as exc:
        log.error("invalid criu plugin settings, using the defaults", extra={"error": str(exc)})
        root = settings.get("ZEROPOD_IMAGE_ROOT", "").strip()
        # the image root is kept when it is valid: images never land in an unexpected place
        _settings = CriuSettings(image_root=Path(root)) if os.path.isabs(root) else \
            CriuSettings()
    try:
        write_config(_settings.criu_config, criu_config(_settings))
    except OSError as exc:
        log.error("cannot write the CRIU configuration; checkpoints will use CRIU's defaults",
                  extra={"path": str(_settings.criu_config), "error": str(exc)})
    try:
        key: NodeKey | None = NodeKey.current(CRIU)
    except (OSError, CriuNotFound, subprocess.SubprocessError) as exc:
        log.warning("cannot identify the boot and CRIU build; per-node caches are off",
                    extra={"error": str(exc)})
        key = None
    if _settings.kdat_cache and key is not None:
        result = ensure_kdat_cache(CRIU, key)
        level = logging.WARNING if result.action == "failed" else logging.DEBUG
        log.log(level, "CRIU kdat cache: %s", result.action,
                extra={"detail": result.detail, "duration_ms": round(result.duration_s * 1e3, 1),
                       "removed_stale_tmp": result.removed_stale_tmp})
    _features = detect_features(CRIU, key)
    reason = _features.pre_dump_unavailable
    if reason:
        log.info("pre-dump is disabled: %s; the %s annotation is ignored", reason,
                 PRE_DUMP_ANNOTATION, extra={"criu": CRIU})


@hookimpl
def zeropod_modify_spec(container: ContainerInfo, spec: dict[str, Any],
                        config: Mapping[str, object]) -> None:
    """Name zeropod's CRIU configuration file in ``org.criu.config`` (read by runc)."""
    if container.sandbox:
        return
    settings = current_settings()
    # one file per container: its dump and restore options differ (see .masked)
    paths = ImagePaths(settings.image_root, container.id)
    try:
        make_private_dir(paths.base)
        write_owner(paths.base)  # the manager removes the folder once this shim is gone
        write_config(paths.criu_config, criu_config(settings))
    except OSError as exc:
        log.error("cannot write the CRIU configuration; not naming it in the spec",
                  extra={"path": str(paths.criu_config), "error": str(exc)})
        return
    name_config_in_spec(spec, paths.criu_config, container_id=container.id)


@hookimpl
def zeropod_make_checkpointer(container: ContainerInfo, runtime: RuntimeHandle,
                              config: Mapping[str, object]) -> CriuCheckpointer | None:
    """A CRIU checkpointer for every container but the pod's sandbox."""
    if container.sandbox:
        return None
    features = _features
    checkpointer = CriuCheckpointer(container, runtime, config, settings=current_settings(),
                                    mem_track=features.mem_track if features else None,
                                    criu=CRIU)
    checkpointer.prepare_arrival()  # a live arrival's image is in place by now (Create)
    return checkpointer


@hookimpl
def zeropod_make_task_checkpointer(container: ContainerInfo,
                                   runtime: RuntimeHandle) -> RuncTaskCheckpointer | None:
    """containerd's checkpoint API (``ctr c checkpoint``/``restore``) for any container."""
    return RuncTaskCheckpointer(container, runtime, timeout_s=current_settings().timeout_s)


@hookimpl
def zeropod_container_deleted(container: ContainerInfo) -> None:
    """Remove the container's images and logs."""
    if container.sandbox:
        return
    remove_container_images(current_settings().image_root, container.id)
