"""Turns ``runc events --stats`` output into containerd's cgroup v1 ``Metrics`` message.

containerd's runc shim reads cgroup files itself; asking runc keeps the shim free of cgroup
layout knowledge (v1, hybrid, v2) at the cost of one runc exec per ``Stats`` call.
"""

from __future__ import annotations

from typing import Any

from zeropod_core.api import cgroups_v1

# memory.stat keys that differ from the message's field names
_MEMORY_RENAMES = {"pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault",
                   "pgmajfault": "pg_maj_fault", "hierarchical_memsw_limit":
                   "hierarchical_swap_limit", "total_pgpgin": "total_pg_pg_in",
                   "total_pgpgout": "total_pg_pg_out", "total_pgfault": "total_pg_fault",
                   "total_pgmajfault": "total_pg_maj_fault"}


def _entry(data: dict[str, Any]) -> Any:
    return cgroups_v1.MemoryEntry(limit=data.get("limit", 0), usage=data.get("usage", 0),
                                  max=data.get("max", 0), failcnt=data.get("failcnt", 0))


def metrics_from_runc_stats(data: dict[str, Any]) -> Any:
    """A ``io.containerd.cgroups.v1.Metrics`` from runc's ``types.Stats`` JSON (``data``)."""
    metrics = cgroups_v1.Metrics()
    pids = data.get("pids") or {}
    metrics.pids.current, metrics.pids.limit = pids.get("current", 0), pids.get("limit", 0)
    cpu = data.get("cpu") or {}
    usage = cpu.get("usage") or {}
    metrics.cpu.usage.total = usage.get("total", 0)
    metrics.cpu.usage.kernel = usage.get("kernel", 0)
    metrics.cpu.usage.user = usage.get("user", 0)
    metrics.cpu.usage.per_cpu.extend(usage.get("percpu") or [])
    throttling = cpu.get("throttling") or {}
    metrics.cpu.throttling.periods = throttling.get("periods", 0)
    metrics.cpu.throttling.throttled_periods = throttling.get("throttledPeriods", 0)
    metrics.cpu.throttling.throttled_time = throttling.get("throttledTime", 0)
    memory = data.get("memory") or {}
    fields = cgroups_v1.MemoryStat.DESCRIPTOR.fields_by_name
    for key, value in (memory.get("raw") or {}).items():
        name = _MEMORY_RENAMES.get(key, key)
        if name in fields and fields[name].message_type is None and isinstance(value, int):
            setattr(metrics.memory, name, value)
    for name, key in (("usage", "usage"), ("swap", "swap"), ("kernel", "kernel"),
                      ("kernel_tcp", "kernelTCP")):
        if memory.get(key):
            getattr(metrics.memory, name).CopyFrom(_entry(memory[key]))
    return metrics
