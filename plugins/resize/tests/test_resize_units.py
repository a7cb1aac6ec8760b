"""The resize plugin's pod arithmetic: what is saved, what shrinks, what comes back."""

from __future__ import annotations

import json
from typing import Any

from zeropod_core.model import Phase
from zeropod_resize.manager_plugin import resized, save_requests, saved_requests
from zeropod_resize.shim_plugin import without_shrunk_weight


def _pod(*containers: tuple[str, dict[str, str], dict[str, str]]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [
                {"name": n, "resources": {"requests": r, "limits": lim}}
                for n, r, lim in containers]}}


def test_requests_are_saved_once() -> None:
    pod = _pod(("app", {"cpu": "250m", "memory": "64Mi"}, {}), ("side", {"cpu": "10m"}, {}))
    save_requests(pod)
    notes = pod["metadata"]["annotations"]
    assert json.loads(notes["zeropod.ctrox.dev/cpu-requests"]) == {"app": "250m", "side": "10m"}
    assert json.loads(notes["zeropod.ctrox.dev/memory-requests"]) == {"app": "64Mi"}
    pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "1m"
    save_requests(pod)  # present: kept, not overwritten with the shrunk value
    assert saved_requests(pod, "app") == {"cpu": "250m", "memory": "64Mi"}


def test_shrink_touches_only_existing_requests_of_that_container() -> None:
    pod = _pod(("app", {"memory": "64Mi"}, {"memory": "128Mi"}), ("side", {"cpu": "10m"}, {}))
    new = resized(pod, "app", Phase.SCALED_DOWN)
    assert new is not None
    assert new["spec"]["containers"][0]["resources"] == {"requests": {"memory": "1Ki"},
                                                         "limits": {"memory": "128Mi"}}
    assert new["spec"]["containers"][1] == pod["spec"]["containers"][1]
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"memory": "64Mi"}
    assert resized(new, "app", Phase.SCALED_DOWN) is None  # already small: no call


def test_restore_puts_the_saved_requests_back() -> None:
    pod = _pod(("app", {"cpu": "250m"}, {}))
    save_requests(pod)
    small = resized(pod, "app", Phase.SCALED_DOWN)
    assert small is not None
    back = resized(small, "app", Phase.RUNNING)
    assert back is not None and back["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "250m"}
    assert resized(back, "app", Phase.RUNNING) is None


def test_nothing_to_do_without_requests_or_without_saved_values() -> None:
    assert resized(_pod(("app", {}, {})), "app", Phase.SCALED_DOWN) is None
    assert resized(_pod(("app", {"cpu": "1m"}, {})), "app", Phase.RUNNING) is None
    assert resized(_pod(("app", {"cpu": "5m"}, {})), "other", Phase.SCALED_DOWN) is None


def test_a_malformed_annotation_restores_nothing() -> None:
    pod = _pod(("app", {"cpu": "1m"}, {}))
    pod["metadata"]["annotations"] = {"zeropod.ctrox.dev/cpu-requests": "{not json"}
    assert saved_requests(pod, "app") == {}


def test_the_shrunk_cpu_weight_is_not_kept_for_the_wake() -> None:
    assert without_shrunk_weight({"cpu": {"shares": 2, "quota": 50000, "period": 100000},
                                  "memory": {"limit": 1 << 28}}) == {
        "cpu": {"quota": 50000, "period": 100000}, "memory": {"limit": 1 << 28}}
    assert without_shrunk_weight({"cpu": {"shares": 2}, "memory": {"limit": 5}}) == {
        "memory": {"limit": 5}}
    assert without_shrunk_weight({"cpu": {"shares": 512}}) is None  # a real change: kept
    assert without_shrunk_weight({"memory": {"limit": 5}}) is None
