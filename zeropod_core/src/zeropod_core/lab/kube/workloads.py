"""Pod manifests for the lab cluster: the counter app under zeropod, as users would write it.

Shared by the cluster tests and ``zeropod demo --kubernetes``. The probes ask ``/crc``, which
the counter app answers without counting, so the count says how many requests a client made.
"""

from __future__ import annotations

from typing import Any

from .. import images

SCALEDOWN = {"zeropod.ctrox.dev/scaledown-duration": "2s"}
PROBES = {
    "readinessProbe": {"httpGet": {"path": "/crc", "port": 8080}, "periodSeconds": 1},
    "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
}


def counter_container(name: str = "app", **extra: Any) -> dict[str, Any]:
    """The counter app (port 8080) with an HTTP readiness and a TCP liveness probe."""
    return {"name": name, "image": images.COUNTER_APP, "imagePullPolicy": "Never",
            **PROBES, **extra}


def zeropod_pod(name: str, containers: list[dict[str, Any]],
                annotations: dict[str, str] | None = None, grace_s: int = 3) -> dict[str, Any]:
    """A pod with ``runtimeClassName: zeropod`` and a 2 s scale-down duration."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {**SCALEDOWN, **(annotations or {})}},
            "spec": {"runtimeClassName": "zeropod", "containers": containers,
                     "terminationGracePeriodSeconds": grace_s}}
