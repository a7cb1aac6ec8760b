"""``ctr`` against io.containerd.zeropod.v2 behaves as against io.containerd.runc.v2.

Every test is parametrized over both runtimes and asserts the same expectations, so a
difference between them fails the zeropod variant.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from zeropod_core.lab.containerd import LabContainer, PrivateContainerd
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.netns import PodNetwork
from zeropod_core.lab.pty import run_in_pty
from zeropod_core.lab.pytest_plugin import LabImages
from zeropod_core.lab.taskapi import update_resources

pytestmark = pytest.mark.containerd

LOOP = ["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.05; done"]


def _cid() -> str:
    return f"cf-{secrets.token_hex(4)}"


def _wait_status(container: LabContainer, wanted: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (status := container.status()) != wanted:
        assert time.monotonic() < deadline, f"{container.id} is {status}, not {wanted}"
        time.sleep(0.02)


def _ctr_in_pty(daemon: PrivateContainerd, *args: str, timeout: float = 30) -> tuple[int, str]:
    """Run ctr with a pty as its stdio (ctr -t insists on a terminal); return code, output."""
    return run_in_pty(["ctr", "--address", str(daemon.address), "--namespace",
                       daemon.namespace, *args], timeout)


def test_run_detached_serves_http(
    runtime: str, lab_images: LabImages, pod_network: PodNetwork,
    run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime)
    response = wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html")
    assert response.status == 200 and b"hello" in response.body
    assert container.status() == "RUNNING"
    assert container.task_pid() > 0


@pytest.mark.parametrize(("script", "code"), [
    ("echo out; echo err >&2; exit 0", 0),
    ("echo out; echo err >&2; exit 3", 3),
])
def test_run_foreground_propagates_output_and_exit_code(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages, script: str, code: int
) -> None:
    args = lab_containerd.run_args(lab_images.busybox, _cid(), runtime=runtime, detach=False,
                                   remove=True, command=["sh", "-c", script])
    proc = lab_containerd.ctr(*args, check=False)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "out\n"
    assert proc.stderr == "err\n"


def test_run_foreground_killed_by_signal(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages
) -> None:
    container_id = _cid()
    args = lab_containerd.run_args(lab_images.busybox, container_id, runtime=runtime,
                                   detach=False, remove=True, command=LOOP)
    ctr = subprocess.Popen(["ctr", "--address", str(lab_containerd.address), "--namespace",
                            lab_containerd.namespace, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        _wait_status(LabContainer(lab_containerd, container_id, runtime), "RUNNING")
        lab_containerd.ctr("task", "kill", "-s", "SIGKILL", container_id)
        assert ctr.wait(timeout=20) == 137
    finally:
        if ctr.poll() is None:
            ctr.kill()
        ctr.communicate()
        LabContainer(lab_containerd, container_id, runtime).remove()


def test_exec_output_and_exit_code(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime, command=LOOP)
    _wait_status(container, "RUNNING")
    proc = lab_containerd.ctr("task", "exec", "--exec-id", "e1", container.id, "sh", "-c",
                              "echo out; echo err >&2; exit 4", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (4, "out\n", "err\n")
    again = lab_containerd.ctr("task", "exec", "--exec-id", "e1", container.id, "true",
                               check=False)
    assert again.returncode == 0  # the exec id is free again once the exec was deleted


def test_exec_with_tty(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime, command=LOOP)
    _wait_status(container, "RUNNING")
    code, output = _ctr_in_pty(lab_containerd, "task", "exec", "-t", "--exec-id", "t1",
                               container.id, "sh", "-c", "tty; echo hello-tty; exit 5")
    assert code == 5, output
    assert "/dev/pts/" in output and "hello-tty" in output


def test_run_with_tty(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages
) -> None:
    args = lab_containerd.run_args(lab_images.busybox, _cid(), runtime=runtime, detach=False,
                                   tty=True, remove=True,
                                   command=["sh", "-c", "tty; stty size; echo hello-run"])
    code, output = _ctr_in_pty(lab_containerd, *args)
    assert code == 0, output
    assert "/dev/pts/" in output and "hello-run" in output


@pytest.mark.parametrize(("signal", "status"), [("SIGTERM", 7), ("SIGKILL", 137)])
def test_kill(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer], signal: str, status: int
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime, command=LOOP)
    _wait_status(container, "RUNNING")
    lab_containerd.ctr("task", "kill", "-s", signal, container.id)
    _wait_status(container, "STOPPED")
    deleted = lab_containerd.ctr("task", "delete", container.id, check=False)
    assert deleted.returncode == 0
    assert f"exit with non-zero exit code {status}" in deleted.stderr
    again = lab_containerd.ctr("task", "kill", container.id, check=False)
    assert again.returncode != 0 and "not found" in again.stderr


def test_ps_lists_init_and_exec(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime, command=LOOP)
    _wait_status(container, "RUNNING")
    exec_proc = subprocess.Popen(
        ["ctr", "--address", str(lab_containerd.address), "--namespace",
         lab_containerd.namespace, "task", "exec", "--exec-id", "ps1", container.id,
         "sleep", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            rows = [line.split() for line in
                    lab_containerd.ctr("task", "ps", container.id).stdout.splitlines()[1:]]
            if len(rows) >= 3 or time.monotonic() > deadline:  # init, its sleep, the exec
                break
            time.sleep(0.05)
        pids = {int(row[0]) for row in rows}
        assert container.task_pid() in pids
        # ctr 1.6 prints "&ProcessDetails{ExecID:ps1,...}", newer ones "exec_id:\"ps1\""
        assert any(len(row) > 1 and "ps1" in " ".join(row[1:]) for row in rows), rows
    finally:
        exec_proc.kill()
        exec_proc.wait()


def test_pause_and_resume(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    pod_network: PodNetwork, run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime)
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html")
    lab_containerd.ctr("task", "pause", container.id)
    assert container.status() == "PAUSED"
    lab_containerd.ctr("task", "resume", container.id)
    assert container.status() == "RUNNING"
    assert http_get(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html").status \
        == 200


def test_metrics(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime, command=LOOP)
    _wait_status(container, "RUNNING")
    out = lab_containerd.ctr("task", "metrics", container.id).stdout
    values = dict(line.split(None, 1) for line in out.splitlines()
                  if line and not line.startswith(("ID", "METRIC", "--")) and " " in line)
    assert {"memory.usage_in_bytes", "cpuacct.usage", "pids.current"} <= set(values), out
    assert int(values["memory.usage_in_bytes"]) > 0
    assert int(values["pids.current"]) >= 1


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mounts:
        return [line.split()[4] for line in mounts if line.split()[4].startswith(str(path))]


def test_delete_leaves_nothing_behind(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime, command=LOOP)
    _wait_status(container, "RUNNING")
    bundle = lab_containerd.bundle(container.id)
    shim_socket = Path(lab_containerd.shim_address(container.id))
    init_pid = container.task_pid()
    assert shim_socket.exists() and _mounts_under(bundle)
    lab_containerd.ctr("task", "kill", "-s", "SIGKILL", container.id)
    _wait_status(container, "STOPPED")
    lab_containerd.ctr("task", "delete", container.id)
    lab_containerd.ctr("container", "delete", container.id)
    deadline = time.monotonic() + 5
    while shim_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not shim_socket.exists()
    assert not Path(f"/proc/{init_pid}").exists()
    assert _mounts_under(bundle) == []
    assert not bundle.exists()
    assert not (lab_containerd.runc_root / lab_containerd.namespace / container.id).exists()
    shims = subprocess.run(["pgrep", "-f", f"-id {container.id}"], capture_output=True,
                           text=True).stdout.split()
    assert shims == []


def test_twenty_containers_concurrently(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages
) -> None:
    ids = [_cid() for _ in range(20)]

    def start(container_id: str) -> LabContainer:
        return lab_containerd.run(lab_images.busybox, container_id, runtime=runtime,
                                  command=LOOP)

    with ThreadPoolExecutor(max_workers=20) as pool:
        containers = list(pool.map(start, ids))
    try:
        for container in containers:
            _wait_status(container, "RUNNING")
        pids = {container.task_pid() for container in containers}
        assert len(pids) == 20
    finally:
        with ThreadPoolExecutor(max_workers=20) as pool:
            list(pool.map(lambda c: c.remove(), containers))
    listed = lab_containerd.ctr("container", "ls", "-q").stdout.split()
    assert not set(ids) & set(listed)


def test_containerd_restart_keeps_tasks_reachable(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    pod_network: PodNetwork, run_container: Callable[..., LabContainer]
) -> None:
    container = run_container(lab_images.busybox, runtime=runtime)
    wait_for_http(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html")
    pid = container.task_pid()
    lab_containerd.restart()
    assert container.status() == "RUNNING"
    assert container.task_pid() == pid
    assert http_get(pod_network.client_path, pod_network.pod_ip, 8080, "/index.html").status \
        == 200
    proc = lab_containerd.ctr("task", "exec", "--exec-id", "after", container.id, "sh", "-c",
                              "echo still-here", check=False)
    assert (proc.returncode, proc.stdout) == (0, "still-here\n")
    lab_containerd.ctr("task", "kill", "-s", "SIGKILL", container.id)
    _wait_status(container, "STOPPED")


def test_containers_of_one_group_share_a_shim(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer]
) -> None:
    group = {"io.containerd.runc.v2.group": f"g-{secrets.token_hex(3)}"}
    first = run_container(lab_images.busybox, runtime=runtime, command=LOOP, annotations=group)
    second = run_container(lab_images.busybox, runtime=runtime, command=LOOP,
                           annotations=group)
    _wait_status(first, "RUNNING")
    _wait_status(second, "RUNNING")
    assert lab_containerd.shim_address(first.id) == lab_containerd.shim_address(second.id)
    with open(f"/proc/{first.task_pid()}/stat") as a, open(f"/proc/{second.task_pid()}/stat") as b:
        assert a.read().rsplit(")", 1)[1].split()[1] == b.read().rsplit(")", 1)[1].split()[1]
    lab_containerd.ctr("task", "kill", "-s", "SIGKILL", first.id)
    _wait_status(first, "STOPPED")
    assert second.status() == "RUNNING"  # the shared shim keeps serving the other container


def test_oom_kill_is_reported(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages
) -> None:
    events = subprocess.Popen(
        ["ctr", "--address", str(lab_containerd.address), "events"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    container_id = _cid()
    try:
        args = lab_containerd.run_args(lab_images.counter, container_id, runtime=runtime,
                                       detach=False, remove=True,
                                       env={"APP_ALLOC_MIB": "96"})
        args.insert(1, "--memory-limit=33554432")  # 32 MiB
        proc = lab_containerd.ctr(*args, check=False)
        assert proc.returncode == 137, proc.stderr
        time.sleep(0.5)
    finally:
        events.terminate()
        output, _ = events.communicate(timeout=10)
    oom_lines = [line for line in output.splitlines() if "/tasks/oom" in line]
    assert any(container_id in line for line in oom_lines), output


def test_update_resources(
    runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
    run_container: Callable[..., LabContainer]
) -> None:
    """Task/Update (kubelet's resize; ctr 1.6 has no command for it) sets cgroup limits."""
    container = run_container(lab_images.busybox, runtime=runtime, command=LOOP)
    _wait_status(container, "RUNNING")
    limit = 123 << 20
    update_resources(lab_containerd.shim_address(container.id), container.id,
                     {"memory": {"limit": limit}})
    with open(f"/proc/{container.task_pid()}/cgroup") as lines:
        memory = next(line.rstrip().split(":", 2)[2] for line in lines
                      if "memory" in line.split(":")[1].split(","))
    assert int(Path(f"/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes").read_text()) == limit
