"""Manager side: what zeropod does shows on the pod, as labels and as Kubernetes events.

* ``--status-labels``: label ``status.zeropod.ctrox.dev/<container>`` = ``RUNNING`` or
  ``SCALED_DOWN`` (a failed checkpoint leaves the app running, a failed restore cold-starts
  it: both are ``RUNNING``), set in the core's one update per event (``zeropod_edit_pod``).
* ``--status-events``: one ``core/v1`` Event per restore, scale-down and failure with
  upstream's reasons and messages ("Restored container nginx in 127ms"); failures are of type
  ``Warning`` with the tail of CRIU's log, shortened. A plain start makes no event.

Without Kubernetes access the manager never calls these hooks: a node without API access
runs without this plugin's effects.
"""

from __future__ import annotations

import datetime
from typing import Any

from zeropod_core import hookimpl
from zeropod_core.manager.kube import KubeApi
from zeropod_core.model import ContainerStatus, Phase

LABEL_PREFIX = "status.zeropod.ctrox.dev/"
CONTROLLER = "zeropod.ctrox.dev/manager"
EVENT_PREFIX = "zeropod-status-event-"
LOG_LINES, LOG_CHARS = 8, 700
_REASONS = {Phase.RUNNING: "Running", Phase.SCALED_DOWN: "Scaled down",
            Phase.CHECKPOINT_FAILED: "Checkpoint failed", Phase.RESTORE_FAILED: "Restore failed"}
_LABELS = {Phase.RUNNING: "RUNNING", Phase.SCALED_DOWN: "SCALED_DOWN",
           Phase.CHECKPOINT_FAILED: "RUNNING", Phase.RESTORE_FAILED: "RUNNING"}


def label_name(container: str) -> str:
    return LABEL_PREFIX + container


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms"


def shorten_log(log_tail: str) -> str:
    """The last lines of CRIU's log that fit an event message (events are for people)."""
    lines = [line for line in log_tail.strip().splitlines() if line.strip()][-LOG_LINES:]
    text = "\n".join(lines)
    return text if len(text) <= LOG_CHARS else "..." + text[-LOG_CHARS:]


def event_text(status: ContainerStatus) -> tuple[str, str, str] | None:
    """(type, reason, message) of the event for ``status``; None when there is none."""
    name = status.container.container_name
    reason = _REASONS.get(status.phase)
    if reason is None or (status.phase is Phase.RUNNING and not status.duration_s):
        return None  # a plain start (no restore) is not news
    if status.phase is Phase.RUNNING:
        return "Normal", reason, f"Restored container {name} in {_ms(status.duration_s)}"
    if status.phase is Phase.SCALED_DOWN:
        took = f" in {_ms(status.duration_s)}" if status.duration_s else ""
        return "Normal", reason, f"Scaled down container {name}{took}"
    what = "Checkpoint" if status.phase is Phase.CHECKPOINT_FAILED else "Restore"
    message = f"{what} failed for container {name}"
    if status.log_tail.strip():
        message += ":\n" + shorten_log(status.log_tail)
    return "Warning", reason, message


def make_event(status: ContainerStatus, pod: dict[str, Any], node: str) -> dict[str, Any] | None:
    """The ``core/v1`` Event for ``status`` on ``pod``, as a JSON dict."""
    text = event_text(status)
    if text is None:
        return None
    kind, reason, message = text
    meta = pod["metadata"]
    when = datetime.datetime.fromtimestamp(status.event_time, datetime.UTC)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": EVENT_PREFIX, "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid", ""),
                           "resourceVersion": meta.get("resourceVersion", ""),
                           "fieldPath": f"spec.containers{{{status.container.container_name}}}"},
        "reason": reason, "message": message, "type": kind, "action": reason,
        # No eventTime: the client re-serialises it from a datetime, without the fraction
        # when it is .000000, which the apiserver's MicroTime parser rejects.
        "firstTimestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "count": 1,
        "source": {"component": CONTROLLER, "host": node},
        "reportingComponent": CONTROLLER, "reportingInstance": node,
    }


@hookimpl
def zeropod_edit_pod(status: ContainerStatus, pod: dict[str, Any], kube: KubeApi) -> None:
    if not kube.settings.status_labels or status.phase not in _LABELS:
        return
    labels = pod["metadata"].setdefault("labels", {}) or {}
    pod["metadata"]["labels"] = labels
    labels[label_name(status.container.container_name)] = _LABELS[status.phase]


@hookimpl
def zeropod_pod_updated(status: ContainerStatus, pod: dict[str, Any], kube: KubeApi) -> None:
    if not kube.settings.status_events:
        return
    event = make_event(status, pod, kube.node_name)
    if event is not None:
        kube.create_event(pod["metadata"]["namespace"], event)
