"""The lab harness works against containerd's own runtime (io.containerd.runc.v2).

This is the baseline the zeropod shim is compared with: the same images, the same namespaces,
the same client.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from zeropod_core.lab.containerd import RUNC_RUNTIME, LabContainer
from zeropod_core.lab.http import HttpError, http_get, wait_for_http
from zeropod_core.lab.netns import PodNetwork
from zeropod_core.lab.pytest_plugin import LabImages

pytestmark = pytest.mark.containerd


def test_busybox_httpd_serves_the_client_namespace(
    lab_images: LabImages, pod_network: PodNetwork, run_container: Callable[..., LabContainer]
) -> None:
    run_container(lab_images.busybox, runtime=RUNC_RUNTIME)
    response = wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html")
    assert response.status == 200
    assert response.body == b"hello from zeropod busybox\n"
    ipv6 = http_get(pod_network.client_path, pod_network.pod_ip6, 8080, "/index.html")
    assert ipv6.body == response.body


def test_counter_app_keeps_state_and_holds_memory(
    lab_images: LabImages, pod_network: PodNetwork, run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.counter, runtime=RUNC_RUNTIME,
                              env={"APP_ALLOC_MIB": "16"})
    first = wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080).json()
    second = http_get(pod_network.client_path, pod_network.pod_ip6, 8080).json()
    assert second["count"] == first["count"] + 1
    assert http_get(pod_network.client_path, pod_network.pod_ip, 8080, "/crc").json() == {
        "crc_ok": True, "mib": 16}
    status = open(f"/proc/{container.task_pid()}/status").read().splitlines()  # noqa: SIM115
    rss_kib = int(next(line.split()[1] for line in status if line.startswith("VmRSS")))
    assert rss_kib > 16 * 1024


def test_counter_app_start_delay_models_a_slow_start(
    lab_images: LabImages, pod_network: PodNetwork, run_container: Callable[..., LabContainer]
) -> None:
    started = time.monotonic()
    run_container(lab_images.counter, runtime=RUNC_RUNTIME, env={"APP_START_DELAY": "1.5"})
    with pytest.raises(HttpError):
        http_get(pod_network.client_path, pod_network.pod_ip, 8080, timeout=0.5)
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=15)
    assert time.monotonic() - started >= 1.5


def test_pod_network_is_removed(pod_network: PodNetwork) -> None:
    other = PodNetwork.create("zpt")
    assert other.pod_path.exists() and other.client_path.exists()
    other.delete()
    assert not other.pod_path.exists() and not other.client_path.exists()
