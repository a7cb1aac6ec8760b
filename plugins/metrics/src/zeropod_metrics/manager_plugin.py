"""Manager side: exports what every shim counted as Prometheus series, with upstream's names.

The shims report cumulative histograms and counters (see :mod:`.shim_plugin`); this collector
turns the manager's current view of the node into metric families at each scrape, so series
of deleted containers and of vanished shims disappear with them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from zeropod_core import hookimpl
from zeropod_core.model import ManagedContainer
from zeropod_core.providers import CollectorRegistryLike, NodeView

from .names import (
    CHECKPOINT_DURATION,
    CHECKPOINT_ERRORS,
    LABELS,
    LAST_CHECKPOINT_TIME,
    LAST_RESTORE_TIME,
    RESTORE_DURATION,
    RESTORE_ERRORS,
    RUNNING,
)

_HELP = {
    CHECKPOINT_DURATION: "Duration of checkpoints (freeze + dump), in seconds",
    RESTORE_DURATION: "Duration of restores, in seconds",
    LAST_CHECKPOINT_TIME: "Unix time of the last checkpoint, in nanoseconds",
    LAST_RESTORE_TIME: "Unix time of the last restore, in nanoseconds",
    RUNNING: "1 while the container runs, 0 while it is scaled down",
    CHECKPOINT_ERRORS: "Failed checkpoints",
    RESTORE_ERRORS: "Failed restores",
}


def _labels(container: ManagedContainer) -> list[str]:
    return [container.name, container.pod, container.namespace]


class ShimMetricsCollector(Collector):
    """Builds the families from the node's containers each time it is collected."""

    def __init__(self, node: NodeView) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        histograms = {name: HistogramMetricFamily(name, _HELP[name], labels=LABELS)
                      for name in (CHECKPOINT_DURATION, RESTORE_DURATION)}
        gauges = {name: GaugeMetricFamily(name, _HELP[name], labels=LABELS)
                  for name in (LAST_CHECKPOINT_TIME, LAST_RESTORE_TIME, RUNNING)}
        # prometheus_client adds "_total" to counter names itself
        counters = {name: CounterMetricFamily(name.removesuffix("_total"), _HELP[name],
                                              labels=LABELS)
                    for name in (CHECKPOINT_ERRORS, RESTORE_ERRORS)}
        for container in self.node.containers():
            labels = _labels(container)
            for sample in container.samples:
                if sample.name in histograms and sample.kind == "histogram":
                    buckets = [(str(bound), float(count)) for bound, count in sample.buckets]
                    buckets.append(("+Inf", float(sample.count)))
                    histograms[sample.name].add_metric(labels, buckets, sample.value)
                elif sample.name in gauges:
                    gauges[sample.name].add_metric(labels, sample.value)
                elif sample.name in counters:
                    counters[sample.name].add_metric(labels, sample.value)
        yield from histograms.values()
        yield from gauges.values()
        yield from counters.values()


@hookimpl
def zeropod_register_collectors(registry: CollectorRegistryLike, node: NodeView) -> None:
    registry.register(ShimMetricsCollector(node))
