"""Metric names and buckets, as upstream zeropod exports them (existing dashboards work)."""

from __future__ import annotations

CHECKPOINT_DURATION = "zeropod_checkpoint_duration_seconds"
RESTORE_DURATION = "zeropod_restore_duration_seconds"
LAST_CHECKPOINT_TIME = "zeropod_last_checkpoint_time"
LAST_RESTORE_TIME = "zeropod_last_restore_time"
RUNNING = "zeropod_running"
CHECKPOINT_ERRORS = "zeropod_checkpoint_errors_total"
RESTORE_ERRORS = "zeropod_restore_errors_total"

# upstream's buckets (v0.10.0): "most durations should be in between 0.1s and 1s"; they span
# the 25 ms - 10 s this project sees (a small server's checkpoint to a large app's restore)
BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
                              2.5, 5.0, 10.0)
LABELS = ("container", "pod", "namespace")
