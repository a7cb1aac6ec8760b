"""Shim side: a sleeping container does not wake up with the CPU weight of its own shrink.

While a container sleeps, the manager shrinks its CPU request to ``1m``; the kubelet applies
that as a Task ``Update`` with the minimum CPU weight (``cpu.shares`` 2). The shim keeps the
last ``Update`` of a sleeping container for its restore, so without this plugin the woken
app would serve its first requests with that minimum weight until the manager has put the
request back and the kubelet has updated the container again. A minimum weight that arrives
while asleep is therefore dropped from the kept ``Update`` (the restored container gets the
weight it was created with); every other field (memory limit, CPU quota, ...) is kept.

Standard library only: this module is imported by every shim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zeropod_core import hookimpl
from zeropod_core.model import ContainerInfo

# the kubelet's cpu.shares for a CPU request of 1m (its minimum, cgroup v1 units)
MINIMUM_SHARES = 2


def without_shrunk_weight(resources: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``resources`` without a minimum ``cpu.shares``; None when there is none to drop."""
    cpu = resources.get("cpu")
    if not isinstance(cpu, Mapping) or not isinstance(cpu.get("shares"), int) \
            or cpu["shares"] > MINIMUM_SHARES:
        return None
    kept = {key: value for key, value in cpu.items() if key != "shares"}
    return {**resources, "cpu": kept} if kept else \
        {key: value for key, value in resources.items() if key != "cpu"}


@hookimpl
def zeropod_update_while_scaled_down(container: ContainerInfo,
                                     resources: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return without_shrunk_weight(resources)
