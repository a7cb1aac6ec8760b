"""Scale to zero and back through real containerd, runc, CRIU and kernel eBPF.

Every test runs the Python counter app (or busybox httpd) under io.containerd.zeropod.v2 with
``scaledown-duration: 1s`` in a pod namespace and talks to it from a client namespace.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from zeropod_core.lab.cgroupfs import v1_value
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer, PrivateContainerd
from zeropod_core.lab.http import HttpResponse, http_get, wait_for_http
from zeropod_core.lab.netns import PodNetwork, socket_in
from zeropod_core.lab.pytest_plugin import LabImages
from zeropod_core.lab.taskapi import update_resources

pytestmark = pytest.mark.containerd

FAST = {"zeropod.ctrox.dev/scaledown-duration": "1s"}


def test_the_criu_plugin_is_loaded() -> None:
    """The tests below rely on real checkpoints: the criu plugin must load (not be skipped)."""
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "zeropod"),
                          "plugins", "--role", "shim"], capture_output=True, text=True,
                         check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["criu"]["status"] == "loaded", rows.get("criu")
    assert rows["ebpf_redirect"]["status"] == "loaded", rows.get("ebpf_redirect")


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout} s"
        time.sleep(0.02)


@pytest.fixture
def counter(lab_images: LabImages, pod_network: PodNetwork,
            run_container: Callable[..., LabContainer]) -> Callable[..., LabContainer]:
    def start(annotations: dict[str, str] | None = None, **env: str) -> LabContainer:
        container = run_container(lab_images.counter, runtime=ZEROPOD_RUNTIME,
                                  annotations={**FAST, **(annotations or {})}, env=env)
        wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=20)
        return container
    return start


def _get(net: PodNetwork, path: str = "/", *, v6: bool = False,
         timeout: float = 10.0) -> HttpResponse:
    return http_get(net.client_path, net.pod_ip6 if v6 else net.pod_ip, 8080, path,
                    timeout=timeout)


def _count(net: PodNetwork, *, v6: bool = False) -> int:
    return int(_get(net, v6=v6).json()["count"])


def test_idle_container_is_checkpointed_and_woken_with_its_state(
    counter: Callable[..., LabContainer], pod_network: PodNetwork,
    lab_containerd: PrivateContainerd
) -> None:
    container = counter()
    before = _count(pod_network)
    pid = container.task_pid()
    _wait_gone(pid)
    snapshot = lab_containerd.image_root / container.id / "snapshot"
    assert snapshot.is_dir() and any(snapshot.iterdir())
    assert stat.S_IMODE((lab_containerd.image_root / container.id).stat().st_mode) == 0o700
    assert container.status() == "RUNNING"  # containerd still sees it running
    assert _count(pod_network) == before + 1  # the state survived the checkpoint
    # images go after the restore (in direct mode just after it, off the wake-up path)
    deadline = time.monotonic() + 10
    while snapshot.exists() and any(snapshot.iterdir()):
        assert time.monotonic() < deadline, "images still there 10 s after the restore"
        time.sleep(0.02)


def _restore_paths(daemon: PrivateContainerd, container_id: str) -> list[str]:
    """The ``path`` of every "restored" line the criu plugin logged for the container."""
    paths = []
    for line in (daemon.base / "containerd.log").read_text().splitlines():
        if line.startswith("{") and '"restored"' in line and container_id in line:
            entry = json.loads(line)
            if entry.get("container") == container_id and "path" in entry:
                paths.append(entry["path"])
    return paths


def test_wakes_go_the_configured_path_and_runc_keeps_track(
    counter: Callable[..., LabContainer], pod_network: PodNetwork,
    lab_containerd: PrivateContainerd
) -> None:
    """Direct mode restores without runc, runc mode through it; either way runc's own view
    of the container (``runc state``, ``runc exec``) is the restored process afterwards."""
    container = counter()
    count = _count(pod_network)
    for _ in range(2):
        pod_network.wait_asleep()
        count += 1
        assert _count(pod_network) == count
    mode = lab_containerd.env["ZEROPOD_CRIU_MODE"]
    assert _restore_paths(lab_containerd, container.id) == [mode, mode]
    # the shim's runc root: the directory of the container's state.json below --runc-root
    roots = [p.parent.parent for p in lab_containerd.runc_root.rglob("state.json")
             if p.parent.name == container.id]
    assert len(roots) == 1, roots
    runc = ["runc", "--root", str(roots[0])]
    state = json.loads(subprocess.run([*runc, "state", container.id], capture_output=True,
                                      text=True, check=True).stdout)
    assert state["status"] == "running" and [state["pid"]] == pod_network.pod_pids()
    out = subprocess.run([*runc, "exec", container.id, "/usr/bin/python3", "-c",
                          "import os; print(os.getpid())"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().isdigit(), out


def test_repeated_cycles_keep_counting(
    counter: Callable[..., LabContainer], pod_network: PodNetwork
) -> None:
    counter()
    count = _count(pod_network)
    for _ in range(3):
        pod_network.wait_asleep()
        count += 1
        assert _count(pod_network) == count


def test_fifty_concurrent_first_connections_all_get_answers(
    counter: Callable[..., LabContainer], pod_network: PodNetwork
) -> None:
    container = counter()
    _wait_gone(container.task_pid())
    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda _: _get(pod_network, timeout=20), range(50)))
    assert all(r.status == 200 and b"count" in r.body for r in responses)
    counts = sorted(int(r.json()["count"]) for r in responses)
    assert len(set(counts)) == 50  # every request reached the app once


def test_connection_during_the_checkpoint_is_served(
    counter: Callable[..., LabContainer], pod_network: PodNetwork,
    lab_containerd: PrivateContainerd
) -> None:
    container = counter(APP_ALLOC_MIB="100")  # a dump of ~100 MiB takes a while
    images = lab_containerd.image_root / container.id
    deadline = time.monotonic() + 15
    while not (images / "work").exists():  # the checkpoint has started
        assert time.monotonic() < deadline, "no checkpoint started"
        time.sleep(0.001)
    response = _get(pod_network, timeout=20)
    assert response.status == 200 and response.json()["count"] >= 2


def test_exec_on_a_sleeping_container_wakes_it(
    counter: Callable[..., LabContainer], pod_network: PodNetwork,
    lab_containerd: PrivateContainerd
) -> None:
    container = counter()
    before = _count(pod_network)
    _wait_gone(container.task_pid())
    proc = lab_containerd.ctr("task", "exec", "--exec-id", "wake", container.id,
                              "/usr/bin/python3", "-c", "print('exec-ok')", check=False)
    assert (proc.returncode, proc.stdout) == (0, "exec-ok\n")
    assert _count(pod_network) == before + 1


def test_kill_and_delete_while_sleeping(
    counter: Callable[..., LabContainer], lab_containerd: PrivateContainerd
) -> None:
    container = counter()
    _wait_gone(container.task_pid())
    lab_containerd.ctr("task", "kill", "-s", "SIGKILL", container.id)
    deadline = time.monotonic() + 10
    while container.status() != "STOPPED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    lab_containerd.ctr("task", "delete", container.id)
    lab_containerd.ctr("container", "delete", container.id)
    assert not (lab_containerd.image_root / container.id / "snapshot").exists()


def test_probes_do_not_wake_a_sleeping_container(
    counter: Callable[..., LabContainer], pod_network: PodNetwork
) -> None:
    container = counter()
    _wait_gone(container.task_pid())
    tcp_probe = socket_in(pod_network.client_path)
    tcp_probe.settimeout(5)
    tcp_probe.connect((pod_network.pod_ip, 8080))
    tcp_probe.close()
    probe = http_get(pod_network.client_path, pod_network.pod_ip, 8080, "/healthz",
                     headers={"User-Agent": "kube-probe/1.31"})
    assert probe.status == 200 and probe.body == b""
    time.sleep(0.5)
    assert pod_network.pod_pids() == []  # still asleep


def test_activity_keeps_a_busy_container_awake(
    counter: Callable[..., LabContainer], pod_network: PodNetwork
) -> None:
    container = counter()
    pid = container.task_pid()
    for _ in range(15):  # a request every 200 ms for 3 s with a 1 s scale-down duration
        assert _get(pod_network).status == 200
        time.sleep(0.2)
    assert Path(f"/proc/{pid}").exists()  # never checkpointed: the same process


def test_ipv6_client_wakes_the_container(
    counter: Callable[..., LabContainer], pod_network: PodNetwork
) -> None:
    container = counter()
    before = _count(pod_network, v6=True)
    _wait_gone(container.task_pid())
    assert _count(pod_network, v6=True) == before + 1


def test_wake_with_checksum_offload_off(
    counter: Callable[..., LabContainer], pod_network: PodNetwork
) -> None:
    pod_network.set_tx_checksum_offload(False)
    container = counter()
    before = _count(pod_network)
    _wait_gone(container.task_pid())
    assert _count(pod_network) == before + 1


def test_bad_annotation_fails_creation_with_a_clear_error(
    lab_containerd: PrivateContainerd, lab_images: LabImages, pod_network: PodNetwork
) -> None:
    args = lab_containerd.run_args(
        lab_images.busybox, "bad-annotation", runtime=ZEROPOD_RUNTIME,
        netns=pod_network.pod_path,
        annotations={"zeropod.ctrox.dev/scaledown-duration": "soon"})
    try:
        proc = lab_containerd.ctr(*args, check=False)
        assert proc.returncode != 0
        assert "zeropod.ctrox.dev/scaledown-duration" in proc.stderr
        assert "'soon'" in proc.stderr
    finally:
        LabContainer(lab_containerd, "bad-annotation", ZEROPOD_RUNTIME).remove()


def test_a_sleeping_container_looks_running(
    counter: Callable[..., LabContainer], pod_network: PodNetwork,
    lab_containerd: PrivateContainerd
) -> None:
    container = counter()
    pid = container.task_pid()
    pod_network.wait_asleep()
    assert container.status() == "RUNNING"
    ps = lab_containerd.ctr("task", "ps", container.id).stdout.splitlines()[1:]
    assert [line.split()[0] for line in ps] == [str(pid)]  # the last PID
    metrics = lab_containerd.ctr("task", "metrics", container.id).stdout
    values = dict(line.split(None, 1) for line in metrics.splitlines()
                  if line and not line.startswith(("ID", "METRIC", "--")) and " " in line)
    assert 0 < int(values["memory.usage_in_bytes"]) < 1024  # small, but not zero
    # ctr 1.6 has no "task update": send the Task API's Update as kubelet's resize would
    update_resources(lab_containerd.shim_address(container.id), container.id,
                     {"memory": {"limit": 256 << 20}})  # accepted, kept for the wake
    assert pod_network.pod_pids() == []  # none of that woke it
    assert _count(pod_network) >= 2  # and it still wakes with its state


def test_the_last_update_while_asleep_is_applied_after_the_wake(
    counter: Callable[..., LabContainer], pod_network: PodNetwork,
    lab_containerd: PrivateContainerd
) -> None:
    """kubelet's in-place resize reaches a sleeping container as Task/Update: the restored
    container must run with the resources of the last one, not those it was created with."""
    container = counter()
    first = pod_network.pod_pids()[0]
    created_with = v1_value(first, "memory", "memory.limit_in_bytes")
    pod_network.wait_asleep()
    address = lab_containerd.shim_address(container.id)
    update_resources(address, container.id,
                     {"memory": {"limit": 200 << 20}, "cpu": {"shares": 300}})
    update_resources(address, container.id,
                     {"memory": {"limit": 123 << 20}, "cpu": {"shares": 512}})
    assert pod_network.pod_pids() == []  # kept, not woken
    before = _count(pod_network)  # wake it
    pid = pod_network.pod_pids()[0]
    assert pid != first
    assert created_with != 123 << 20
    assert v1_value(pid, "memory", "memory.limit_in_bytes") == 123 << 20
    assert v1_value(pid, "cpu", "cpu.shares") == 512
    assert _count(pod_network) == before + 1  # state kept through it all
    # while running, an Update applies at once
    update_resources(address, container.id, {"memory": {"limit": 150 << 20}})
    assert v1_value(pid, "memory", "memory.limit_in_bytes") == 150 << 20


def _masks(pid: int) -> dict[str, tuple[str, str]]:
    """Masked-directory mounts of a process: mount point -> (mount options, super options)."""
    masks = {}
    with open(f"/proc/{pid}/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] in ("/proc/acpi", "/sys/firmware", "/proc/scsi", "/proc/asound"):
                masks[fields[4]] = (fields[5], fields[sep + 3])
    return masks


def test_masked_directories_stay_empty_and_read_only_across_restores(
    counter: Callable[..., LabContainer], pod_network: PodNetwork,
    lab_containerd: PrivateContainerd
) -> None:
    container = counter()
    before = _masks(pod_network.pod_pids()[0])
    assert before, "runc masked no directory in this container"
    pod_network.wait_asleep()
    _count(pod_network)  # wake it
    after = _masks(pod_network.pod_pids()[0])
    assert set(after) == set(before)
    for options in after.values():
        assert "ro" in options[0].split(",") or "ro" in options[1].split(","), after
    probe = lab_containerd.ctr(
        "task", "exec", "--exec-id", "masks", container.id, "/usr/bin/python3", "-c",
        "import os, sys\n"
        f"paths = {sorted(after)!r}\n"
        "for p in paths:\n"
        "    assert os.listdir(p) == [], p\n"
        "    try:\n"
        "        open(os.path.join(p, 'x'), 'w')\n"
        "    except OSError as e:\n"
        "        print(p, e.strerror)\n"
        "    else:\n"
        "        sys.exit(p + ' is writable')\n", check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.count("Read-only file system") == len(after)


def _wait_logged(lab_containerd: PrivateContainerd, container_id: str, message: str,
                 count: int = 1, timeout: float = 30) -> None:
    """Wait until the shim logged ``message`` for the container ``count`` times."""
    log = lab_containerd.base / "containerd.log"
    deadline = time.monotonic() + timeout
    while sum(1 for line in log.read_text().splitlines()
              if message in line and container_id in line) < count:
        assert time.monotonic() < deadline, f"not logged {count} times: {message}"
        time.sleep(0.05)


def _strict_criu_config(tmp_path: Path) -> dict[str, str]:
    """A user's own CRIU configuration without tcp-close: CRIU refuses to dump an
    established TCP connection, so a client holding one makes the checkpoint fail."""
    strict = tmp_path / "criu-strict.conf"
    strict.write_text("network-lock skip\n")
    return {**FAST, "org.criu.config": str(strict)}


def test_a_failed_checkpoint_keeps_the_app_serving_and_is_retried(
    lab_containerd: PrivateContainerd, lab_images: LabImages, pod_network: PodNetwork,
    run_container: Callable[..., LabContainer], tmp_path: Path
) -> None:
    """The dump fails while a client holds a connection; the app keeps running with its state,
    and once the connection is gone a later scale-down checkpoints it after all (not a kill:
    the next wake still has the state)."""
    container = run_container(lab_images.counter, runtime=ZEROPOD_RUNTIME,
                              annotations=_strict_criu_config(tmp_path))
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=20)
    held = socket_in(pod_network.client_path)  # an idle, established connection
    held.settimeout(5)
    held.connect((pod_network.pod_ip, 8080))
    try:
        _wait_logged(lab_containerd, container.id, "checkpoint failed, the app keeps running")
        assert pod_network.pod_pids()  # still running
    finally:
        held.close()  # the single-threaded app serves one connection at a time
    assert _count(pod_network) == 2  # same process, state intact
    pod_network.wait_asleep(timeout=30)  # retried after the back-off: a real checkpoint
    assert _count(pod_network) == 3, "the retry must checkpoint, not kill"


def test_checkpoints_are_given_up_after_three_failures_in_a_row(
    lab_containerd: PrivateContainerd, lab_images: LabImages, pod_network: PodNetwork,
    run_container: Callable[..., LabContainer], tmp_path: Path
) -> None:
    container = run_container(lab_images.counter, runtime=ZEROPOD_RUNTIME,
                              annotations=_strict_criu_config(tmp_path))
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, deadline_s=20)
    held = socket_in(pod_network.client_path)
    held.settimeout(5)
    held.connect((pod_network.pod_ip, 8080))
    try:  # back-offs of 2 s and 4 s between the three attempts
        _wait_logged(lab_containerd, container.id, "giving up on checkpoints", timeout=40)
        _wait_logged(lab_containerd, container.id, "app keeps running; retrying", count=2)
    finally:
        held.close()
    assert _count(pod_network) == 2
    pod_network.wait_asleep(timeout=30)  # now the scale-down kills
    assert _count(pod_network) == 1  # a cold start
