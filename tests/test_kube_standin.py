"""Status labels, events and in-place resize through the real ``kubernetes`` client against the
STAND-IN apiserver (``zeropod_core.lab.kube_standin``), which follows the rules of the
Kubernetes version it plays: 1.33 (``pods/resize``), 1.31 (feature gate, plain update) and
1.20 (no in-place resize: ``Invalid``). The lab's real 1.20 cluster is for the parts 1.20 has.

The manager's own pipeline (``PodUpdater``) runs the two plugins exactly as in production.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab.kube_standin import StandinApi
from zeropod_core.manager.kube import KubeApi, KubeSettings
from zeropod_core.manager.main import Manager
from zeropod_core.manager.pods import PodUpdater
from zeropod_core.model import ContainerInfo, ContainerStatus, Phase, RoleName
from zeropod_core.plugins import make_plugin_manager
from zeropod_kube_status import manager_plugin as status_plugin
from zeropod_resize import manager_plugin as resize_plugin
from zeropod_resize.manager_plugin import InPlaceResizer

ALL = {"status_labels": True, "status_events": True, "in_place_scaling": True}
LABEL = "status.zeropod.ctrox.dev/app"


def _container(name: str, requests: dict[str, str] | None = None,
               limits: dict[str, str] | None = None) -> dict[str, Any]:
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return {"name": name, "image": "busybox", "resources": resources}


def _pod(name: str, *containers: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"containers": list(containers)}}


def _status(pod: str, phase: Phase, duration_s: float = 0.0, log_tail: str = "",
            container: str = "app") -> ContainerStatus:
    info = ContainerInfo(id=f"{pod}-{container}", bundle="", namespace="", pod_name=pod,
                         pod_namespace="default", container_name=container)
    return ContainerStatus(info, phase, time.time(), duration_s, log_tail)


def _updater(kubeconfig: Path, **switches: bool) -> PodUpdater:
    pm = make_plugin_manager(RoleName.MANAGER, autoload=False)
    pm.register(status_plugin, "kube_status")
    pm.register(resize_plugin, "resize")
    settings = KubeSettings(kubeconfig=str(kubeconfig), node_name="node-a",
                            **(switches or ALL))
    kube = KubeApi.connect(settings)
    resizer = pm.hook.zeropod_make_pod_resizer(kube=kube) if settings.in_place_scaling \
        else None
    return PodUpdater(kube, pm, resizer)


async def _feed(updater: PodUpdater, *statuses: ContainerStatus) -> None:
    for status in statuses:
        updater.submit(status)
    await updater.idle()


@pytest.fixture
def standin(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[StandinApi, Path]]:
    marker = request.node.get_closest_marker("kube_version")
    api = StandinApi(version=marker.args[0] if marker else "1.33")
    with api.serve(tmp_path) as kubeconfig:
        yield api, kubeconfig


def _requests(pod: dict[str, Any], container: str = "app") -> dict[str, str]:
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    return dict((spec.get("resources") or {}).get("requests") or {})


def _limits(pod: dict[str, Any], container: str = "app") -> dict[str, str]:
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    return dict((spec.get("resources") or {}).get("limits") or {})


async def test_labels_annotations_resize_and_events_follow_the_phases(
        standin: tuple[StandinApi, Path]) -> None:
    """A multi-container pod with one managed container, on the 1.33 stand-in."""
    api, kubeconfig = standin
    api.add_pod(_pod("web", _container("app", {"cpu": "250m", "memory": "64Mi"},
                                       {"memory": "128Mi"}),
                     _container("sidecar", {"cpu": "100m"})))
    updater = _updater(kubeconfig)

    calls = len(api.calls)
    await _feed(updater, _status("web", Phase.SCALED_DOWN, 0.25))
    pod = api.pod("web")
    assert pod["metadata"]["labels"] == {"app": "web", LABEL: "SCALED_DOWN"}
    notes = pod["metadata"]["annotations"]
    assert json.loads(notes["zeropod.ctrox.dev/cpu-requests"]) == {"app": "250m",
                                                                   "sidecar": "100m"}
    assert json.loads(notes["zeropod.ctrox.dev/memory-requests"]) == {"app": "64Mi"}
    assert _requests(pod) == {"cpu": "1m", "memory": "1Ki"}
    assert _limits(pod) == {"memory": "128Mi"}  # untouched
    assert _requests(pod, "sidecar") == {"cpu": "100m"}  # not managed: untouched
    assert pod["status"]["qosClass"] == "Burstable"
    # one GET, one PUT (labels + annotations together), one resize, one event
    assert [m for m, _ in api.calls[calls:]] == ["GET", "PUT", "PUT", "POST"]
    assert api.calls[calls + 2][1].endswith("/pods/web/resize")
    assert isinstance(updater.resizer, InPlaceResizer) and updater.resizer.subresource is True

    calls = len(api.calls)
    await _feed(updater, _status("web", Phase.RUNNING, 0.127))
    pod = api.pod("web")
    assert pod["metadata"]["labels"][LABEL] == "RUNNING"
    assert _requests(pod) == {"cpu": "250m", "memory": "64Mi"}
    assert _limits(pod) == {"memory": "128Mi"}
    assert len(api.calls) - calls == 4
    # the annotations keep the originals (only set when absent)
    assert json.loads(pod["metadata"]["annotations"]["zeropod.ctrox.dev/cpu-requests"])["app"] \
        == "250m"

    events = [(e["type"], e["reason"], e["message"]) for e in api.events]
    assert events == [("Normal", "Scaled down", "Scaled down container app in 250ms"),
                      ("Normal", "Running", "Restored container app in 127ms")]
    event = api.events[-1]
    assert event["involvedObject"]["fieldPath"] == "spec.containers{app}"
    assert event["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert event["source"] == {"component": "zeropod.ctrox.dev/manager", "host": "node-a"}
    assert event["metadata"]["name"].startswith("zeropod-status-event-")


async def test_a_plain_start_sets_the_label_but_makes_no_event(
        standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("plain", _container("app", {"cpu": "100m"})))
    await _feed(_updater(kubeconfig), _status("plain", Phase.RUNNING, 0.0))
    assert api.pod("plain")["metadata"]["labels"][LABEL] == "RUNNING"
    assert api.events == []
    assert _requests(api.pod("plain")) == {"cpu": "100m"}


async def test_a_pod_without_requests_is_not_resized(standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("bare", _container("app")))
    await _feed(_updater(kubeconfig), _status("bare", Phase.SCALED_DOWN, 0.1))
    pod = api.pod("bare")
    assert _requests(pod) == {} and pod["status"]["qosClass"] == "BestEffort"
    assert not any(path.endswith("/resize") for _, path in api.calls)
    assert pod["metadata"]["labels"][LABEL] == "SCALED_DOWN"


async def test_only_the_requests_that_exist_shrink(standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("mem", _container("app", {"memory": "32Mi"})))
    updater = _updater(kubeconfig)
    await _feed(updater, _status("mem", Phase.SCALED_DOWN, 0.1))
    assert _requests(api.pod("mem")) == {"memory": "1Ki"}  # no CPU request added
    await _feed(updater, _status("mem", Phase.RUNNING, 0.1))
    assert _requests(api.pod("mem")) == {"memory": "32Mi"}


async def test_a_guaranteed_pod_keeps_its_requests(standin: tuple[StandinApi, Path],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    api, kubeconfig = standin
    both = {"cpu": "100m", "memory": "64Mi"}
    api.add_pod(_pod("gold", _container("app", both, both)))
    await _feed(_updater(kubeconfig), _status("gold", Phase.SCALED_DOWN, 0.1))
    assert _requests(api.pod("gold")) == both
    assert "Guaranteed" in caplog.text


@pytest.mark.kube_version("1.31")
async def test_without_the_resize_subresource_a_plain_update_resizes(
        standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("old", _container("app", {"cpu": "200m"})))
    updater = _updater(kubeconfig)
    await _feed(updater, _status("old", Phase.SCALED_DOWN, 0.1))
    assert _requests(api.pod("old")) == {"cpu": "1m"}
    assert isinstance(updater.resizer, InPlaceResizer) and updater.resizer.subresource is False
    resizes = sum(path.endswith("/resize") for _, path in api.calls)
    await _feed(updater, _status("old", Phase.RUNNING, 0.1))
    assert _requests(api.pod("old")) == {"cpu": "200m"}
    assert sum(path.endswith("/resize") for _, path in api.calls) == resizes  # learnt


@pytest.mark.kube_version("1.20")
async def test_invalid_is_logged_once_per_pod_and_never_retried(
        standin: tuple[StandinApi, Path], caplog: pytest.LogCaptureFixture) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("v120", _container("app", {"cpu": "200m"})))
    updater = _updater(kubeconfig)
    caplog.set_level(logging.WARNING)
    await _feed(updater, _status("v120", Phase.SCALED_DOWN, 0.1),
                _status("v120", Phase.RUNNING, 0.1), _status("v120", Phase.SCALED_DOWN, 0.1))
    warnings = [r for r in caplog.records if "refused the in-place resize" in r.getMessage()]
    assert len(warnings) == 1
    assert "pod updates may not change fields" in warnings[0].getMessage()
    assert "InPlacePodVerticalScaling" in warnings[0].getMessage()
    pod = api.pod("v120")
    assert _requests(pod) == {"cpu": "200m"}
    assert pod["metadata"]["labels"][LABEL] == "SCALED_DOWN"  # labels unaffected
    # per event one PUT for the labels; one refused resize in all (not tried again)
    puts = [c for c in api.calls if c == ("PUT", "/api/v1/namespaces/default/pods/v120")]
    assert len(puts) == 3 + 1


async def test_conflicts_are_read_again_and_retried(standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("busy", _container("app", {"cpu": "300m"})))
    api.conflict_next(2)
    await _feed(_updater(kubeconfig), _status("busy", Phase.SCALED_DOWN, 0.1))
    pod = api.pod("busy")
    assert pod["metadata"]["labels"][LABEL] == "SCALED_DOWN"
    assert _requests(pod) == {"cpu": "1m"}
    assert sum(1 for m, p in api.calls if m == "GET" and p.endswith("/pods/busy")) >= 2


async def test_the_api_being_down_costs_a_logged_retry(
        standin: tuple[StandinApi, Path], caplog: pytest.LogCaptureFixture) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("down", _container("app", {"cpu": "300m"})))
    updater = _updater(kubeconfig)
    api.fail_next(3)
    await _feed(updater, _status("down", Phase.SCALED_DOWN, 0.1))
    assert api.pod("down")["metadata"]["labels"][LABEL] == "SCALED_DOWN"
    assert "Kubernetes API unavailable, retrying" in caplog.text
    assert len(api.events) == 1


async def test_a_missing_rbac_rule_is_a_clear_log_line(
        standin: tuple[StandinApi, Path], caplog: pytest.LogCaptureFixture) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("rbac", _container("app", {"cpu": "300m"})))
    api.forbidden.add(("create", "events"))
    await _feed(_updater(kubeconfig), _status("rbac", Phase.SCALED_DOWN, 0.1),
                _status("rbac", Phase.RUNNING, 0.1))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines  # once, not per event
    assert 'cannot create resource "events"' in lines[0] and "RBAC" in lines[0]
    assert api.pod("rbac")["metadata"]["labels"][LABEL] == "RUNNING"  # the rest works


async def test_failures_are_warnings_with_the_criu_log_shortened(
        standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("fail", _container("app", {"cpu": "300m"})))
    log_tail = "\n".join(f"(00.{i:06d}) line {i} " + "x" * 150 for i in range(40))
    await _feed(_updater(kubeconfig),
                _status("fail", Phase.CHECKPOINT_FAILED, 0.2, log_tail=log_tail))
    (event,) = api.events
    assert (event["type"], event["reason"]) == ("Warning", "Checkpoint failed")
    assert event["message"].startswith("Checkpoint failed for container app:\n")
    assert "line 39" in event["message"] and "line 20" not in event["message"]
    assert len(event["message"]) < 800
    pod = api.pod("fail")
    assert pod["metadata"]["labels"][LABEL] == "RUNNING"  # the app still runs
    assert _requests(pod) == {"cpu": "300m"}


async def test_events_of_a_pod_are_applied_in_order(standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("order", _container("app", {"cpu": "300m"})))
    phases = [Phase.SCALED_DOWN, Phase.RUNNING] * 5
    await _feed(_updater(kubeconfig), *[_status("order", p, 0.01 * (i + 1))
                                        for i, p in enumerate(phases)])
    assert [e["reason"] for e in api.events] == ["Scaled down", "Running"] * 5
    assert [e["message"][-4:] for e in api.events] == \
        [f"{10 * (i + 1)}ms"[-4:] for i in range(10)]
    pod = api.pod("order")
    assert pod["metadata"]["labels"][LABEL] == "RUNNING"
    assert _requests(pod) == {"cpu": "300m"}


async def test_switches_off_mean_no_api_calls_for_them(standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    api.add_pod(_pod("quiet", _container("app", {"cpu": "300m"})))
    await _feed(_updater(kubeconfig, status_labels=True),
                _status("quiet", Phase.SCALED_DOWN, 0.1))
    pod = api.pod("quiet")
    assert pod["metadata"]["labels"][LABEL] == "SCALED_DOWN"
    assert "annotations" not in pod["metadata"] or not pod["metadata"]["annotations"]
    assert api.events == [] and _requests(pod) == {"cpu": "300m"}


async def test_healthz_reports_the_api_and_the_switches(standin: tuple[StandinApi, Path]) -> None:
    api, kubeconfig = standin
    pm = make_plugin_manager(RoleName.MANAGER, autoload=False)
    pm.register(resize_plugin, "resize")
    manager = Manager("/nonexistent", pm, kube_settings=KubeSettings(
        kubeconfig=str(kubeconfig), node_name="node-a", in_place_scaling=True))
    manager.setup()
    report = await manager.kube_health()
    assert report["reachable"] is True and report["version"] == "v1.33.0-standin"
    assert report["in_place_scaling"] is True and report["status_labels"] is False
    assert report["resizer"] is True and report["node_name"] == "node-a"
    api.fail_next(10)
    assert (await manager.kube_health())["reachable"] is False


async def test_no_kubernetes_access_leaves_the_manager_running() -> None:
    manager = Manager("/nonexistent", make_plugin_manager(RoleName.MANAGER, autoload=False),
                      kube_settings=KubeSettings(kubeconfig="/nonexistent/kubeconfig",
                                                 status_labels=True))
    manager.setup()
    assert manager.pods is None
    report = await manager.kube_health()
    assert report["reachable"] is False and "/nonexistent/kubeconfig" in report["problem"]
