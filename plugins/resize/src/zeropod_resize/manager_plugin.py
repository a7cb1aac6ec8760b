"""Manager side: a sleeping container gives its requests back to the scheduler, in place.

On the first event of a pod the original requests of its containers are saved in the pod's
annotations ``zeropod.ctrox.dev/cpu-requests`` and ``zeropod.ctrox.dev/memory-requests``
(JSON, container -> quantity; only if absent), in the core's one update per event. Then

* ``SCALED_DOWN``: the container's CPU request becomes ``1m`` and its memory request ``1Ki``
  (only requests that exist: adding one, or touching a limit, could change the QoS class,
  which a resize may not do; a Guaranteed pod is left alone for the same reason);
* ``RUNNING``: the saved requests come back.

The change goes through the ``pods/resize`` subresource (Kubernetes >= 1.32). Where it does
not exist (404) the resizer falls back to a plain pod update, which clusters of 1.27-1.31
accept with the InPlacePodVerticalScaling feature gate. A conflict re-reads the pod and tries
again; an ``Invalid`` answer (no such feature, a rule of the API) is logged once per pod with
the API's reason, and that pod is not tried again.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Mapping
from typing import Any

from zeropod_core import hookimpl
from zeropod_core.manager.kube import KubeApi, KubeError
from zeropod_core.model import ContainerStatus, Phase
from zeropod_core.providers import PodResizer

log = logging.getLogger("zeropod.resize")

ANNOTATIONS = {"cpu": "zeropod.ctrox.dev/cpu-requests",
               "memory": "zeropod.ctrox.dev/memory-requests"}
MINIMUM = {"cpu": "1m", "memory": "1Ki"}
CONFLICT_ATTEMPTS = 10


def save_requests(pod: dict[str, Any]) -> None:
    """Record every container's requests in the pod's annotations, unless already there."""
    meta = pod["metadata"]
    annotations = meta.get("annotations") or {}
    for resource, key in ANNOTATIONS.items():
        if key in annotations:
            continue
        annotations[key] = json.dumps(
            {c["name"]: c["resources"]["requests"][resource]
             for c in pod["spec"]["containers"]
             if resource in ((c.get("resources") or {}).get("requests") or {})},
            sort_keys=True)
    meta["annotations"] = annotations


def saved_requests(pod: Mapping[str, Any], container: str) -> dict[str, str]:
    """The original requests of ``container`` from the annotations (malformed: none)."""
    annotations = pod["metadata"].get("annotations") or {}
    saved = {}
    for resource, key in ANNOTATIONS.items():
        try:
            values = json.loads(annotations.get(key) or "{}")
        except ValueError:
            log.warning("ignoring a malformed annotation", extra={"annotation": key})
            continue
        if isinstance(values, dict) and isinstance(values.get(container), str):
            saved[resource] = values[container]
    return saved


def resized(pod: Mapping[str, Any], container: str, phase: Phase) -> dict[str, Any] | None:
    """The pod with ``container``'s requests fit for ``phase``; None if nothing changes."""
    new = copy.deepcopy(dict(pod))
    for spec in new["spec"]["containers"]:
        if spec["name"] != container:
            continue
        requests = (spec.get("resources") or {}).get("requests") or {}
        if phase is Phase.SCALED_DOWN:
            target = {r: MINIMUM[r] for r in MINIMUM if r in requests}
        else:
            target = {r: q for r, q in saved_requests(pod, container).items() if r in requests}
        if not target or all(requests.get(r) == q for r, q in target.items()):
            return None
        requests.update(target)  # only existing requests; limits untouched
        return new
    return None


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod["metadata"]
    return str(meta.get("uid") or f"{meta['namespace']}/{meta['name']}")


class InPlaceResizer:
    """:class:`~zeropod_core.providers.PodResizer` through ``pods/resize`` or a pod update."""

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self.subresource: bool | None = None  # unknown until the first resize
        self._told: set[str] = set()  # pods not to resize (refused, Guaranteed), logged

    async def resize(self, status: ContainerStatus, pod: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._resize, status, dict(pod))

    def _resize(self, status: ContainerStatus, pod: dict[str, Any]) -> None:
        info = status.container
        if _pod_key(pod) in self._told:
            return  # refused before: it would be again
        for _ in range(CONFLICT_ATTEMPTS):
            if (pod.get("status") or {}).get("qosClass") == "Guaranteed":
                self._tell_once(pod, "not resizing a Guaranteed pod: lower requests would "
                                     "change its QoS class, which a resize may not do")
                return
            new = resized(pod, info.container_name, status.phase)
            if new is None:
                return
            try:
                self._put(new)
            except KubeError as exc:
                if exc.conflict:
                    pod = self.kube.get_pod(info.pod_namespace, info.pod_name)
                    continue
                if exc.status == 422:
                    # the first line: a real apiserver appends a diff of the whole spec
                    reason = exc.message.splitlines()[0][:400] if exc.message else exc.reason
                    self._tell_once(pod, f"the API refused the in-place resize ({reason});"
                                         " in-place resize needs Kubernetes >= 1.27 with the "
                                         "InPlacePodVerticalScaling feature (on by default "
                                         "since 1.33)")
                    return
                raise
            log.info("resized", extra={
                "pod": f"{info.pod_namespace}/{info.pod_name}", "container": info.container_name,
                "phase": status.phase.value, "subresource": self.subresource})
            return
        raise KubeError(409, "Conflict", f"pod {info.pod_name}: resize still conflicting "
                                         f"after {CONFLICT_ATTEMPTS} attempts")

    def _put(self, pod: dict[str, Any]) -> None:
        if self.subresource is not False:
            try:
                self.kube.resize_pod(pod)
            except KubeError as exc:
                if exc.status != 404 or exc.details.get("name") == pod["metadata"]["name"]:
                    raise
                self.subresource = False
                log.info("no pods/resize subresource (Kubernetes < 1.32): resizing through "
                         "a plain pod update")
            else:
                self.subresource = True
                return
        self.kube.replace_pod(pod)

    def _tell_once(self, pod: Mapping[str, Any], message: str) -> None:
        """Log why this pod is not resized, once; it is not tried again."""
        meta, key = pod["metadata"], _pod_key(pod)
        if key not in self._told:
            self._told.add(key)
            log.warning(message, extra={"pod": f"{meta['namespace']}/{meta['name']}"})


@hookimpl
def zeropod_edit_pod(status: ContainerStatus, pod: dict[str, Any], kube: KubeApi) -> None:
    if kube.settings.in_place_scaling:
        save_requests(pod)


@hookimpl
def zeropod_make_pod_resizer(kube: KubeApi) -> PodResizer:
    return InPlaceResizer(kube)
