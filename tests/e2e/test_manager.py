"""The node manager through containerd: two pods, three app containers, real checkpoints.

After N checkpoints and restores per container, ``/metrics`` (parsed with prometheus_client's
parser) shows exactly N of each per container; ``/status`` and ``zeropod status`` agree with
it; killing a shim removes its series; restarting the manager loses no shim.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer, PrivateContainerd
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.manager import LabManager
from zeropod_core.lab.netns import PodNetwork, parent_pid
from zeropod_core.lab.pytest_plugin import LabImages

pytestmark = pytest.mark.containerd
CYCLES = 2


def _cri(pod: str, namespace: str, name: str, sandbox_id: str) -> dict[str, str]:
    return {"io.kubernetes.cri.sandbox-name": pod,
            "io.kubernetes.cri.sandbox-namespace": namespace,
            "io.kubernetes.cri.container-name": name,
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": sandbox_id,
            "zeropod.ctrox.dev/scaledown-duration": "1s"}


@pytest.fixture
def manager(lab_containerd: PrivateContainerd, tmp_path: Path) -> Iterator[LabManager]:
    running = LabManager.start(lab_containerd.node_socket_dir, tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def second_pod() -> Iterator[PodNetwork]:
    net = PodNetwork.create("zpt2")
    try:
        yield net
    finally:
        net.delete()


def _listening(net: PodNetwork, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", net.pod, "ss", "-Hltn", f"sport = :{port}"],
                         capture_output=True, text=True).stdout
    return bool(out.strip())


def _metrics(manager: LabManager) -> dict[tuple[str, str], dict[str, float]]:
    """(container, sample name) -> value, for the samples we check."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(manager.get("/metrics").decode()):
        for sample in family.samples:
            key = (sample.labels.get("container", ""), sample.labels.get("pod", ""))
            values.setdefault(key, {})[sample.name] = sample.value
    return values


def test_metrics_status_and_shim_lifecycle(
    lab_containerd: PrivateContainerd, lab_images: LabImages, pod_network: PodNetwork,
    second_pod: PodNetwork, manager: LabManager,
) -> None:
    web = [LabContainer(lab_containerd, f"web-{i}", ZEROPOD_RUNTIME) for i in range(2)]
    api = LabContainer(lab_containerd, "api-0", ZEROPOD_RUNTIME)
    apps = [(web[0], pod_network, 8080), (web[1], pod_network, 8081), (api, second_pod, 8080)]
    try:
        for i, (container, net, port) in enumerate(apps):
            pod, namespace = ("web", "shop") if net is pod_network else ("api", "shop")
            lab_containerd.run(
                lab_images.counter, container.id, runtime=ZEROPOD_RUNTIME, netns=net.pod_path,
                env={"APP_PORT": str(port)},
                annotations=_cri(pod, namespace, f"app{i}", f"sandbox-{pod}"))
            wait_for_http(net.client_path, net.pod_ip, port, deadline_s=30)
        for _ in range(CYCLES):
            for container, net, port in apps:
                deadline = time.monotonic() + 20
                while _listening(net, port):  # this container scaled down
                    assert time.monotonic() < deadline, f"{container.id} did not scale down"
                    time.sleep(0.02)
                assert http_get(net.client_path, net.pod_ip, port, timeout=20).status == 200
        time.sleep(0.3)
        metrics = _metrics(manager)
        for i, pod in ((0, "web"), (1, "web"), (2, "api")):
            series = metrics[(f"app{i}", pod)]
            assert series["zeropod_restore_duration_seconds_count"] == CYCLES, series
            # the first apps may have scaled down again while we woke the others: exactly one
            # more checkpoint then, and zeropod_running says so
            asleep = 1 - series["zeropod_running"]
            assert series["zeropod_checkpoint_duration_seconds_count"] == CYCLES + asleep, series
            assert series["zeropod_checkpoint_errors_total"] == 0
        status = json.loads(manager.get("/status"))["containers"]
        assert {(c["name"], c["pod"], c["namespace"]) for c in status} == {
            ("app0", "web", "shop"), ("app1", "web", "shop"), ("app2", "api", "shop")}
        cli = subprocess.run([str(Path(sys.executable).with_name("zeropod")), "status",
                              "--manager", manager.address, "--json"],
                             capture_output=True, text=True, check=True)
        assert {c["id"] for c in json.loads(cli.stdout)["containers"]} == \
            {c["id"] for c in status}
        table = subprocess.run([str(Path(sys.executable).with_name("zeropod")), "status",
                                "--manager", manager.address], capture_output=True, text=True,
                               check=True).stdout
        assert "shop/web" in table and "app2" in table

        # restarting the manager loses no shim
        manager.stop()
        restarted = LabManager.start(lab_containerd.node_socket_dir, manager.log_path.parent)
        try:
            deadline = time.monotonic() + 10
            while len(json.loads(restarted.get("/status"))["containers"]) < 3:
                assert time.monotonic() < deadline, "the manager did not find all shims again"
                time.sleep(0.1)
            assert _metrics(restarted)[("app2", "api")][
                "zeropod_restore_duration_seconds_count"] == CYCLES

            # killing the api pod's shim removes its series
            assert http_get(second_pod.client_path, second_pod.pod_ip, 8080).status == 200
            shim_pid = parent_pid(second_pod.pod_pids()[0])
            assert Path(lab_containerd.shim_address(api.id)).exists()
            os.kill(shim_pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while ("app2", "api") in _metrics(restarted):
                assert time.monotonic() < deadline, "the killed shim's series stayed"
                time.sleep(0.2)
            assert ("app0", "web") in _metrics(restarted)
        finally:
            restarted.stop()
    finally:
        for container, _, _ in reversed(apps):
            container.remove()


def test_healthz_reports_what_the_node_can_do(manager: LabManager) -> None:
    health = json.loads(manager.get("/healthz"))
    capabilities = health["capabilities"]
    assert health["ok"] is True
    assert capabilities["criu"]["version"].startswith("4.2")
    assert capabilities["redirector"]["loads"] is True
    features = capabilities["criu_features"]
    assert isinstance(features["pre_dump"], bool)
    assert features["pre_dump"] or "CONFIG_MEM_SOFT_DIRTY" in features["pre_dump_unavailable"]
    assert {p["name"]: p["status"] for p in capabilities["plugins"]}["metrics"] == "loaded"


def test_orphaned_checkpoint_folders_are_removed_and_live_ones_kept(
    lab_containerd: PrivateContainerd, lab_images: LabImages, pod_network: PodNetwork,
    second_pod: PodNetwork, tmp_path: Path
) -> None:
    """A killed shim leaves its sleeping container's images behind; the manager removes
    them (with a log line) and never touches the folder of a live, sleeping container."""
    annotations = {"zeropod.ctrox.dev/scaledown-duration": "1s"}
    live = lab_containerd.run(lab_images.counter, runtime=ZEROPOD_RUNTIME,
                              netns=pod_network.pod_path, annotations=annotations)
    doomed = lab_containerd.run(lab_images.counter, runtime=ZEROPOD_RUNTIME,
                                netns=second_pod.pod_path, annotations=annotations)
    try:
        for net in (pod_network, second_pod):
            wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=20)
        doomed_shim = parent_pid(second_pod.pod_pids()[0])
        for net in (pod_network, second_pod):
            net.wait_asleep()
        images = lab_containerd.image_root
        assert (images / doomed.id / "snapshot" / "inventory.img").exists()
        os.kill(doomed_shim, signal.SIGKILL)  # a crashed shim: nobody removes its images
        unowned = images / "unowned-fresh"  # no owner file, recent: could be a Create right now
        unowned.mkdir()
        running = LabManager.start(lab_containerd.node_socket_dir, tmp_path, env={
            "ZEROPOD_IMAGE_ROOT": str(images), "ZEROPOD_HOUSEKEEPING_INTERVAL": "0.3"})
        try:
            deadline = time.monotonic() + 15
            while (images / doomed.id).exists():
                assert time.monotonic() < deadline, "the orphaned images were not removed"
                time.sleep(0.1)
            assert "removed the checkpoint folder" in running.log_path.read_text()
            time.sleep(1)  # a few more rounds: the live container's folder stays
            assert (images / live.id / "snapshot" / "inventory.img").exists()
            assert unowned.exists()
        finally:
            running.stop()
            unowned.rmdir()
        assert http_get(pod_network.client_path, pod_network.pod_ip, 8080).json()["count"] == 2
    finally:
        for container in (doomed, live):
            container.remove()
