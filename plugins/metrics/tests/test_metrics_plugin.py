"""The metrics plugin's two halves, joined as the manager joins them."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from zeropod_metrics import manager_plugin, shim_plugin
from zeropod_metrics.names import BUCKETS

from zeropod_core.model import (
    ContainerInfo,
    ContainerStatus,
    ManagedContainer,
    Metric,
    Outcome,
    Phase,
)

INFO = ContainerInfo(id="c1", bundle="/b", namespace="k8s.io", pod_name="web",
                     pod_namespace="shop", container_name="app")


class _Node:
    def __init__(self, containers: list[ManagedContainer]) -> None:
        self._containers = containers

    def containers(self) -> list[ManagedContainer]:
        return self._containers


def _scrape(samples: list[Metric]) -> dict[str, float]:
    record = ManagedContainer(id="c1", name="app", pod="web", namespace="shop", shim="/s",
                              phase="RUNNING", since=time.time(), samples=tuple(samples))
    registry = CollectorRegistry(auto_describe=False)
    manager_plugin.zeropod_register_collectors(registry=registry, node=_Node([record]))
    text = generate_latest(registry).decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.get("container") == "app"
            assert sample.labels.get("pod") == "web"
            assert sample.labels.get("namespace") == "shop"
            key = sample.name + (f"{{le={sample.labels['le']}}}" if "le" in sample.labels
                                 else "")
            values[key] = sample.value
    return values


def test_counts_are_cumulative_and_exported_with_upstream_names() -> None:
    shim_plugin.zeropod_container_created(container=INFO)
    for duration in (0.04, 0.07, 3.0):
        shim_plugin.zeropod_after_checkpoint(container=INFO,
                                             outcome=Outcome(ok=True, duration_s=duration))
    shim_plugin.zeropod_after_checkpoint(container=INFO,
                                         outcome=Outcome(ok=False, duration_s=0.1))
    shim_plugin.zeropod_after_restore(container=INFO, outcome=Outcome(ok=True, duration_s=0.06))
    shim_plugin.zeropod_phase_changed(status=ContainerStatus(INFO, Phase.SCALED_DOWN, 100.0))
    first = _scrape(shim_plugin.zeropod_collect_metrics(container=INFO))
    second = _scrape(shim_plugin.zeropod_collect_metrics(container=INFO))
    assert first == second  # scraping twice neither loses nor double-counts
    assert first["zeropod_checkpoint_duration_seconds_count"] == 3
    assert first["zeropod_checkpoint_duration_seconds_bucket{le=0.05}"] == 1
    assert first["zeropod_checkpoint_duration_seconds_bucket{le=0.1}"] == 2
    assert first["zeropod_checkpoint_duration_seconds_bucket{le=+Inf}"] == 3
    assert abs(first["zeropod_checkpoint_duration_seconds_sum"] - 3.11) < 1e-9
    assert first["zeropod_restore_duration_seconds_count"] == 1
    assert first["zeropod_checkpoint_errors_total"] == 1
    assert first["zeropod_restore_errors_total"] == 0
    assert first["zeropod_running"] == 0
    assert first["zeropod_last_checkpoint_time"] == 100e9
    shim_plugin.zeropod_container_deleted(container=INFO)
    assert shim_plugin.zeropod_collect_metrics(container=INFO) == []


def test_buckets_cover_25ms_to_10s() -> None:
    assert BUCKETS[0] == 0.025 and BUCKETS[-1] == 10.0
    assert list(BUCKETS) == sorted(BUCKETS)
