"""The resize plugin's shim side in a real shim: the woken container keeps its CPU weight when
the last Update of its sleep was the kubelet applying the manager's 1m CPU request."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from zeropod_core.lab.cgroupfs import v1_value
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer, PrivateContainerd
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.netns import PodNetwork
from zeropod_core.lab.pytest_plugin import LabImages
from zeropod_core.lab.taskapi import update_resources

pytestmark = pytest.mark.containerd


def test_the_shrink_echo_does_not_starve_the_woken_container(
    lab_containerd: PrivateContainerd, lab_images: LabImages, pod_network: PodNetwork,
    run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.counter, runtime=ZEROPOD_RUNTIME,
                              annotations={"zeropod.ctrox.dev/scaledown-duration": "1s"})
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=20)
    first = pod_network.pod_pids()[0]
    created_shares = v1_value(first, "cpu", "cpu.shares")
    assert created_shares > 2
    pod_network.wait_asleep()
    # what the kubelet sends for requests cpu: 1m with a memory limit changed meanwhile
    update_resources(lab_containerd.shim_address(container.id), container.id,
                     {"cpu": {"shares": 2}, "memory": {"limit": 99 << 20}})
    assert http_get(pod_network.client_path, pod_network.pod_ip, 8080,
                    timeout=20).status == 200
    pid = pod_network.pod_pids()[0]
    assert pid != first
    assert v1_value(pid, "cpu", "cpu.shares") == created_shares
    assert v1_value(pid, "memory", "memory.limit_in_bytes") == 99 << 20
