"""Selective installs degrade as documented: without CRIU the container is killed and
cold-started (state lost); without the eBPF redirector it scales down on a timer and only an
exec wakes it. Each case runs its own private containerd with a plugin blocked."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from zeropod_core.lab import images
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, PrivateContainerd, lab_base
from zeropod_core.lab.http import HttpError, http_get, wait_for_http
from zeropod_core.lab.netns import PodNetwork

pytestmark = pytest.mark.containerd


def _daemon(blocked: str) -> Iterator[PrivateContainerd]:
    daemon = PrivateContainerd.start(lab_base("zeropod-degraded"),
                                     env={"ZEROPOD_DISABLE_PLUGINS": blocked})
    try:
        daemon.import_image(images.build(images.counter_app_spec()))
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(daemon.base, ignore_errors=True)


@pytest.fixture
def without_criu(pod_network: PodNetwork) -> Iterator[PrivateContainerd]:
    yield from _daemon("criu")


@pytest.fixture
def without_ebpf(pod_network: PodNetwork) -> Iterator[PrivateContainerd]:
    yield from _daemon("ebpf_redirect")


def test_without_criu_the_container_is_cold_started(
    without_criu: PrivateContainerd, pod_network: PodNetwork
) -> None:
    without_criu.run(images.COUNTER_APP, runtime=ZEROPOD_RUNTIME, netns=pod_network.pod_path,
                     annotations={"zeropod.ctrox.dev/scaledown-duration": "1s"})
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=20)
    assert http_get(pod_network.client_path, pod_network.pod_ip, 8080).json()["count"] == 2
    pod_network.wait_asleep()
    woken = http_get(pod_network.client_path, pod_network.pod_ip, 8080, timeout=20)
    assert woken.json()["count"] == 1  # a cold start: the in-memory state is gone


def test_without_the_redirector_only_exec_wakes_it(
    without_ebpf: PrivateContainerd, pod_network: PodNetwork
) -> None:
    container = without_ebpf.run(images.COUNTER_APP, runtime=ZEROPOD_RUNTIME,
                                 netns=pod_network.pod_path,
                                 annotations={"zeropod.ctrox.dev/scaledown-duration": "1s"})
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=20)
    pod_network.wait_asleep()
    with pytest.raises(HttpError):  # nothing listens while it sleeps: refused
        http_get(pod_network.client_path, pod_network.pod_ip, 8080, timeout=2)
    proc = without_ebpf.ctr("task", "exec", "--exec-id", "wake", container.id,
                            "/usr/bin/python3", "-c", "print('awake')", check=False)
    assert (proc.returncode, proc.stdout) == (0, "awake\n")
    assert http_get(pod_network.client_path, pod_network.pod_ip, 8080).json()["count"] == 2
    log = (without_ebpf.base / "containerd.log").read_text()
    assert "waking on traffic is off" in log
