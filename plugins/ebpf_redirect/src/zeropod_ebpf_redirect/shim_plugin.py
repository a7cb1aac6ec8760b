"""Shim-side hooks of ``zeropod-ebpf-redirect`` (entry point group ``zeropod.shim``).

Gives every container that has a network namespace an :class:`EbpfRedirector` and an
:class:`EbpfActivityTracker`. Their pod's programs are loaded, pinned under
``ZEROPOD_BPF_ROOT/<pod>`` and attached to ``lo`` and ``eth0`` inside the namespace by the
loader helper process on first use; this module and everything it imports use the standard
library only (plus zeropod_core), because one shim runs per pod. The pod's pins are removed
when its sandbox container is deleted (or its last container, when there is no sandbox).

Unavailable (not an error for the shim) when the compiled object is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from zeropod_core import hookimpl
from zeropod_core.model import ContainerInfo
from zeropod_core.plugins import PluginUnavailable

OBJECT_PATH = Path(__file__).with_name("redirect.bpf.o")


def require_object(path: Path = OBJECT_PATH) -> None:
    """Raise :class:`PluginUnavailable` when the compiled program is not there."""
    if not path.is_file():
        raise PluginUnavailable("redirect.bpf.o not built; run plugins/ebpf_redirect/build.sh")


require_object()

# Imported after the check: a plugin without its object should fail with the reason above.
from zeropod_core.config import parse_switch  # noqa: E402

from .netns import is_host_netns  # noqa: E402
from .pod import Pod, PodRegistry  # noqa: E402
from .redirector import EbpfRedirector  # noqa: E402
from .settings import (  # noqa: E402
    ANNOTATION_IGNORE_LOCALHOST,
    ANNOTATION_IGNORE_SOURCES,
    PluginSettings,
    TrackerFilter,
    parse_addresses,
)
from .tracker import EbpfActivityTracker  # noqa: E402

log = logging.getLogger("zeropod.ebpf.shim")

registry = PodRegistry()
"""The pods of this shim process (one in practice: one shim per pod)."""

_settings: PluginSettings | None = None


def current_settings() -> PluginSettings:
    """Settings from ``zeropod_configure``, or from the environment if it was not called."""
    global _settings
    if _settings is None:
        _settings = PluginSettings.from_environ()
    return _settings


@hookimpl
def zeropod_register_annotations(
    register: Callable[[str, Callable[[str], object], str | None, str], None],
) -> None:
    """Per-pod overrides of which peers do not count as activity."""
    register(ANNOTATION_IGNORE_LOCALHOST, parse_switch, None,
             "true/false: traffic from loopback (127.0.0.0/8, ::1) does not count as activity "
             "(default: ZEROPOD_TRACKER_IGNORE_LOCALHOST, true)")
    register(ANNOTATION_IGNORE_SOURCES, parse_addresses, None,
             "comma-separated IPs (node, kubelet) whose traffic does not count as activity "
             "(default: ZEROPOD_TRACKER_IGNORE_SOURCES)")


@hookimpl
def zeropod_configure(settings: Mapping[str, str]) -> None:
    """Read ``ZEROPOD_BPF_ROOT`` and the other settings listed in :mod:`.settings`."""
    global _settings
    try:
        _settings = PluginSettings.from_mapping(settings)
    except ValueError as exc:
        log.error("invalid eBPF plugin settings, using the defaults", extra={"error": str(exc)})
        _settings = PluginSettings()
    log.debug("configured", extra={"bpf_root": str(_settings.bpf_root),
                                   "ifaces": list(_settings.ifaces),
                                   "activator_ports": str(_settings.activator_ports)})


def _pod_of(container: ContainerInfo, provider: str) -> Pod | None:
    if container.sandbox or not container.netns_path:
        log.debug("no provider: sandbox container or no network namespace", extra={
            "provider": provider, "container": container.id, "netns": container.netns_path})
        return None
    if is_host_netns(container.netns_path):
        log.warning("no provider: the container uses the host network namespace", extra={
            "provider": provider, "container": container.id, "netns": container.netns_path})
        return None
    try:
        return registry.pod_for(container, current_settings())
    except OSError as exc:
        log.warning("no provider: network namespace unusable", extra={
            "provider": provider, "container": container.id, "netns": container.netns_path,
            "error": str(exc)})
        return None


@hookimpl
def zeropod_make_redirector(container: ContainerInfo) -> EbpfRedirector | None:
    """An eBPF redirector for containers in their own network namespace."""
    pod = _pod_of(container, "redirector")
    return None if pod is None else EbpfRedirector(pod, container)


@hookimpl
def zeropod_make_activity_tracker(container: ContainerInfo) -> EbpfActivityTracker | None:
    """An eBPF activity tracker for containers in their own network namespace."""
    pod = _pod_of(container, "activity tracker")
    if pod is None:
        return None
    try:
        tracker = current_settings().tracker_for(container.annotations)
    except ValueError as exc:  # the core validated the annotations at Create; be safe anyway
        log.warning("invalid tracker annotation, using the defaults",
                    extra={"container": container.id, "error": str(exc)})
        tracker = TrackerFilter()
    return EbpfActivityTracker(pod, container, tracker)


@hookimpl
def zeropod_container_created(container: ContainerInfo, config: Mapping[str, object]) -> None:
    """Remember sandbox containers: their deletion is what ends the pod's pins."""
    del config
    if container.netns_path:
        try:
            registry.pod_for(container, current_settings())
        except OSError as exc:
            log.debug("container namespace not usable", extra={
                "container": container.id, "netns": container.netns_path, "error": str(exc)})


@hookimpl
def zeropod_container_deleted(container: ContainerInfo) -> None:
    """Remove the pod's programs and pins when its sandbox (or last container) is deleted."""
    if registry.container_deleted(container, current_settings()):
        log.info("pod redirector removed", extra={"container": container.id,
                                                  "sandbox": container.sandbox})
