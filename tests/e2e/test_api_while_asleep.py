"""A scale-to-zero container driven the way containerd's clients drive it (gRPC, own FIFOs).

The output FIFOs of a sleeping container stay open (no EOF: it is still "running") and the
restored process keeps writing to them; an exec wakes it and its output ends with EOF before
Delete; a checkpoint through containerd's API wakes it first and restores with its state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, PrivateContainerd
from zeropod_core.lab.grpcclient import ApiContainers, ContainerdClient, Fifos
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.netns import PodNetwork
from zeropod_core.lab.pytest_plugin import LabImages

pytestmark = pytest.mark.containerd

FAST = {"zeropod.ctrox.dev/scaledown-duration": "1s"}


@pytest.fixture
def client(lab_containerd: PrivateContainerd) -> Iterator[ContainerdClient]:
    with ContainerdClient(lab_containerd.address, lab_containerd.namespace) as api:
        yield api


@pytest.fixture
def records(lab_containerd: PrivateContainerd,
            client: ContainerdClient) -> Iterator[ApiContainers]:
    made = ApiContainers(lab_containerd, client)
    yield made
    made.remove_all()


class OutputReader:
    """Collects a FIFO's bytes in a thread and notes whether EOF came."""

    def __init__(self, fifos: Fifos, stream: str = "stdout") -> None:
        self.data = bytearray()
        self.eof = False
        self._fifos, self._stream = fifos, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.eof:
            chunk, eof = self._fifos.read_until_eof(self._stream, 0.05)
            self.data += chunk
            self.eof = eof

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _wait_asleep(client: ContainerdClient, container_id: str, timeout: float = 20) -> int:
    """Wait until the task's process is gone (checkpointed) while containerd sees it running."""
    pid: int = client.get(container_id).pid
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the container did not scale down"
        time.sleep(0.02)
    assert client.get(container_id).status == 2  # RUNNING to containerd
    return pid


def _start_counter(client: ContainerdClient, records: ApiContainers, lab_images: LabImages,
                   pod_network: PodNetwork) -> tuple[str, Fifos]:
    """The counter app under zeropod in the pod namespace, answering (one request counted)."""
    container_id = records.create(
        lab_images.counter, runtime=ZEROPOD_RUNTIME,
        namespaces={"network": str(pod_network.pod_path)}, annotations=FAST)
    fifos = client.fifos(container_id)
    client.create_task(container_id, fifos)
    client.start(container_id)
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=20)
    return container_id, fifos


def _ticks(data: bytes) -> list[int]:
    return [int(line.split()[1]) for line in data.decode().splitlines()
            if line.startswith("tick ")]


def test_output_reaches_the_same_fifos_across_checkpoints(
        client: ContainerdClient, records: ApiContainers, lab_images: LabImages,
        pod_network: PodNetwork) -> None:
    script = ("httpd -p 8080 -h /www; i=0; "
              "while true; do i=$((i+1)); echo tick $i; sleep 0.2; done")
    container_id = records.create(
        lab_images.busybox, ["sh", "-c", script], runtime=ZEROPOD_RUNTIME,
        namespaces={"network": str(pod_network.pod_path)}, annotations=FAST)
    fifos = client.fifos(container_id)
    client.create_task(container_id, fifos)
    client.start(container_id)
    reader = OutputReader(fifos)
    try:
        wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html")
        _wait_asleep(client, container_id)
        asleep = len(_ticks(bytes(reader.data)))
        time.sleep(0.6)
        assert not reader.eof, "a sleeping container's stdout must not end"
        assert len(_ticks(bytes(reader.data))) == asleep, "output while checkpointed?"
        response = http_get(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html")
        assert response.status == 200
        deadline = time.monotonic() + 10
        while len(_ticks(bytes(reader.data))) < asleep + 3:
            assert time.monotonic() < deadline, "no output from the restored process"
            time.sleep(0.05)
        ticks = _ticks(bytes(reader.data))
        assert ticks == list(range(1, len(ticks) + 1)), \
            f"the restored shell did not continue its count: {ticks}"
        assert not reader.eof
    finally:
        reader.stop()
        fifos.close()


def test_exec_through_the_api_wakes_and_its_output_ends(
        client: ContainerdClient, records: ApiContainers, lab_images: LabImages,
        pod_network: PodNetwork) -> None:
    container_id, init_fifos = _start_counter(client, records, lab_images, pod_network)
    _wait_asleep(client, container_id)
    fifos = client.fifos(f"{container_id}-x")
    client.exec(container_id, "x", ["/usr/bin/python3", "-c",
                                    "import sys; print('exec-ok'); sys.exit(3)"], fifos)
    client.start(container_id, "x")
    assert client.wait(container_id, "x") == 3
    assert fifos.read_until_eof("stdout", 10) == (b"exec-ok\n", True)
    client.delete_process(container_id, "x")
    fifos.close()
    init_fifos.close()


def test_checkpoint_api_wakes_a_sleeping_container_and_restores_its_state(
        client: ContainerdClient, records: ApiContainers, lab_images: LabImages,
        pod_network: PodNetwork) -> None:
    def count() -> int:
        return int(http_get(pod_network.client_path, pod_network.pod_ip, 8080, "/").json()
                   ["count"])

    container_id, fifos = _start_counter(client, records, lab_images, pod_network)
    assert count() == 2  # wait_for_http counted one
    old_pid = _wait_asleep(client, container_id)
    client.pause(container_id)  # as containerd's client does around a checkpoint
    try:
        image = client.checkpoint(container_id)
    finally:
        client.resume(container_id)
    assert client.get(container_id).status == 2
    assert count() == 3, "the checkpointed container keeps running with its state"
    client.remove_task(container_id)
    restored = client.fifos(f"{container_id}-restored")
    client.create_task(container_id, restored, checkpoint=image)
    pid = client.start(container_id)
    assert pid not in (0, old_pid) and os.path.exists(f"/proc/{pid}")
    assert count() == 3, "the image holds the state at the checkpoint (count was 2)"
    fifos.close()
    restored.close()


def test_a_paused_container_is_not_scaled_down_until_resumed(
        client: ContainerdClient, records: ApiContainers, lab_images: LabImages,
        pod_network: PodNetwork) -> None:
    """Pause wakes a sleeping container and keeps it paused: no scale-down behind the back of
    the client (a restore would bring it back running); after Resume it sleeps again."""
    container_id, fifos = _start_counter(client, records, lab_images, pod_network)
    asleep_pid = _wait_asleep(client, container_id)
    client.pause(container_id)
    paused_pid: int = client.get(container_id).pid
    assert paused_pid != asleep_pid, "Pause woke it"
    time.sleep(3)  # three scale-down durations
    assert Path(f"/proc/{paused_pid}").exists(), "a paused container was checkpointed"
    assert client.get(container_id).status == 4  # PAUSED
    client.resume(container_id)
    assert client.get(container_id).status == 2
    _wait_asleep(client, container_id)
    fifos.close()
