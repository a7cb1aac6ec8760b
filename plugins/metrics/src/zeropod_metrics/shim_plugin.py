"""Shim side: counts checkpoints and restores per container, cumulatively.

Cumulative histograms and counters (not "the last value since the previous scrape", as
upstream's shim reports) mean a scrape can neither lose an event nor count it twice, however
often the manager asks and whether or not it restarted meanwhile. Standard library only: this
module is imported in every pod's shim.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from zeropod_core import hookimpl
from zeropod_core.model import ContainerInfo, ContainerStatus, Metric, Outcome, Phase

from .names import (
    BUCKETS,
    CHECKPOINT_DURATION,
    CHECKPOINT_ERRORS,
    LAST_CHECKPOINT_TIME,
    LAST_RESTORE_TIME,
    RESTORE_DURATION,
    RESTORE_ERRORS,
    RUNNING,
)


@dataclass
class Histogram:
    """Observation counts per bucket (not cumulative), their sum and number."""

    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    observations: int = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(BUCKETS, value)
        if index < len(BUCKETS):
            self.counts[index] += 1
        self.total += value
        self.observations += 1

    def sample(self, name: str) -> Metric:
        cumulative, running = [], 0
        for bound, count in zip(BUCKETS, self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return Metric(name, "histogram", self.total, buckets=tuple(cumulative),
                      count=self.observations)


@dataclass
class ContainerCounts:
    checkpoints: Histogram = field(default_factory=Histogram)
    restores: Histogram = field(default_factory=Histogram)
    checkpoint_errors: int = 0
    restore_errors: int = 0
    last_checkpoint_ns: int = 0
    last_restore_ns: int = 0
    running: bool = True


_counts: dict[str, ContainerCounts] = {}


def counts_for(container: ContainerInfo) -> ContainerCounts:
    return _counts.setdefault(container.id, ContainerCounts())


@hookimpl
def zeropod_container_created(container: ContainerInfo) -> None:
    counts_for(container)  # series exist from the start (zeropod_running = 1)


@hookimpl
def zeropod_after_checkpoint(container: ContainerInfo, outcome: Outcome) -> None:
    counts = counts_for(container)
    if outcome.ok:
        counts.checkpoints.observe(outcome.duration_s)
    else:
        counts.checkpoint_errors += 1


@hookimpl
def zeropod_after_restore(container: ContainerInfo, outcome: Outcome) -> None:
    counts = counts_for(container)
    if outcome.ok:
        counts.restores.observe(outcome.duration_s)
    else:
        counts.restore_errors += 1


@hookimpl
def zeropod_phase_changed(status: ContainerStatus) -> None:
    counts = counts_for(status.container)
    stamp = int(status.event_time * 1e9)
    if status.phase is Phase.SCALED_DOWN:
        counts.running, counts.last_checkpoint_ns = False, stamp
    elif status.phase is Phase.RUNNING:
        counts.running = True
        if status.duration_s:
            counts.last_restore_ns = stamp


@hookimpl
def zeropod_container_deleted(container: ContainerInfo) -> None:
    _counts.pop(container.id, None)


@hookimpl
def zeropod_collect_metrics(container: ContainerInfo) -> list[Metric]:
    counts = _counts.get(container.id)
    if counts is None:
        return []
    return [
        counts.checkpoints.sample(CHECKPOINT_DURATION),
        counts.restores.sample(RESTORE_DURATION),
        Metric(CHECKPOINT_ERRORS, "counter", counts.checkpoint_errors),
        Metric(RESTORE_ERRORS, "counter", counts.restore_errors),
        Metric(LAST_CHECKPOINT_TIME, "gauge", counts.last_checkpoint_ns),
        Metric(LAST_RESTORE_TIME, "gauge", counts.last_restore_ns),
        Metric(RUNNING, "gauge", 1.0 if counts.running else 0.0),
    ]
