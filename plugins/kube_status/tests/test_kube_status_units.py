"""What the kube-status plugin writes: label values, event texts, the CRIU log cut."""

from __future__ import annotations

from typing import Any, cast

from zeropod_core.manager.kube import KubeApi, KubeSettings
from zeropod_core.model import ContainerInfo, ContainerStatus, Phase
from zeropod_kube_status.manager_plugin import (
    event_text,
    make_event,
    shorten_log,
    zeropod_edit_pod,
)

INFO = ContainerInfo(id="c1", bundle="", namespace="", pod_name="web", pod_namespace="shop",
                     container_name="nginx")


def _status(phase: Phase, duration_s: float = 0.0, log_tail: str = "") -> ContainerStatus:
    return ContainerStatus(INFO, phase, 1_700_000_000.5, duration_s, log_tail)


class _Kube:
    def __init__(self, status_labels: bool = False) -> None:
        self.settings = KubeSettings(status_labels=status_labels)
        self.node_name = "node-a"


def test_upstream_reasons_and_messages() -> None:
    assert event_text(_status(Phase.RUNNING, 0.127)) == (
        "Normal", "Running", "Restored container nginx in 127ms")
    assert event_text(_status(Phase.SCALED_DOWN, 0.25)) == (
        "Normal", "Scaled down", "Scaled down container nginx in 250ms")
    assert event_text(_status(Phase.RESTORE_FAILED, 0.1)) == (
        "Warning", "Restore failed", "Restore failed for container nginx")
    assert event_text(_status(Phase.RUNNING, 0.0)) is None  # a plain start
    assert event_text(_status(Phase.STOPPING)) is None


def test_the_criu_log_is_cut_to_its_last_lines() -> None:
    log = "\n".join(f"line {i}" for i in range(100)) + "\n\n"
    assert shorten_log(log).splitlines() == [f"line {i}" for i in range(92, 100)]
    long = "x" * 5000
    assert shorten_log(long) == "..." + "x" * 700


def test_the_event_names_the_pod_the_container_and_the_node() -> None:
    pod = {"metadata": {"name": "web", "namespace": "shop", "uid": "u1",
                        "resourceVersion": "7"}}
    event = make_event(_status(Phase.SCALED_DOWN, 0.2), pod, "node-a")
    assert event is not None
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "web",
                                       "namespace": "shop", "uid": "u1",
                                       "resourceVersion": "7",
                                       "fieldPath": "spec.containers{nginx}"}
    assert "eventTime" not in event  # see make_event
    assert event["firstTimestamp"] == "2023-11-14T22:13:20Z"
    assert event["reportingInstance"] == "node-a" and event["metadata"]["namespace"] == "shop"


def _edit(phase: Phase, status_labels: bool = False) -> dict[str, Any]:
    pod: dict[str, Any] = {"metadata": {"name": "web", "labels": None}}
    zeropod_edit_pod(status=_status(phase, 0.1), pod=pod,
                     kube=cast(KubeApi, _Kube(status_labels)))
    return pod


def test_labels_only_with_the_switch_and_running_after_failures() -> None:
    assert _edit(Phase.SCALED_DOWN)["metadata"]["labels"] is None
    assert _edit(Phase.SCALED_DOWN, True)["metadata"]["labels"] == {
        "status.zeropod.ctrox.dev/nginx": "SCALED_DOWN"}
    for phase in (Phase.RUNNING, Phase.CHECKPOINT_FAILED, Phase.RESTORE_FAILED):
        assert _edit(phase, True)["metadata"]["labels"] == {
            "status.zeropod.ctrox.dev/nginx": "RUNNING"}
