"""The Task API as containerd's real clients drive it, for both runtimes, through gRPC.

containerd's Go client and the CRI plugin (``kubectl exec``, ``exec -it``, ``attach``, tty
containers, container checkpoints) make their own FIFOs, wait for a process's exit and then
for EOF on its output before they delete it. :mod:`zeropod_core.lab.grpcclient` does the same;
every scenario runs under ``io.containerd.runc.v2`` and ``io.containerd.zeropod.v2`` with the
same assertions.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from zeropod_core.api import linux_runc, runc_options, typeurl
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, PrivateContainerd
from zeropod_core.lab.grpcclient import ApiContainers, ContainerdClient
from zeropod_core.lab.pytest_plugin import LabImages
from zeropod_core.procfs import is_alive

pytestmark = pytest.mark.containerd

LOOP = ["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.05; done"]
EOF_TIMEOUT_S = 10.0

MakeContainer = Callable[..., str]


@pytest.fixture
def client(lab_containerd: PrivateContainerd) -> Iterator[ContainerdClient]:
    with ContainerdClient(lab_containerd.address, lab_containerd.namespace) as api:
        yield api


@pytest.fixture
def make_container(runtime: str, lab_containerd: PrivateContainerd, lab_images: LabImages,
                   client: ContainerdClient) -> Iterator[MakeContainer]:
    """``make_container(command, tty=False, host_pid=False, user=None)``: a busybox container
    record in the lab's cgroup parent; its task is the test's, removed afterwards."""
    records = ApiContainers(lab_containerd, client)

    def make(command: list[str], *, tty: bool = False, host_pid: bool = False,
             user: tuple[int, int] | None = None) -> str:
        # the host's PID namespace (this process's: /proc/1 may not be readable here)
        namespaces = {"pid": f"/proc/{os.getpid()}/ns/pid"} if host_pid else {}
        return records.create(lab_images.busybox, command, runtime=runtime, tty=tty,
                              namespaces=namespaces, user=user)

    yield make
    records.remove_all()


def _running(client: ContainerdClient, make_container: MakeContainer,
             command: list[str] = LOOP, **kwargs: bool) -> str:
    container_id = make_container(command, **kwargs)
    fifos = client.fifos(container_id, terminal=bool(kwargs.get("tty")))
    client.create_task(container_id, fifos)
    client.start(container_id)
    return container_id


# --- 1. output streams end when the process ends -----------------------------------------


def test_exec_output_ends_before_delete(client: ContainerdClient,
                                        make_container: MakeContainer) -> None:
    container_id = _running(client, make_container)
    fifos = client.fifos(f"{container_id}-e1")
    client.exec(container_id, "e1", ["sh", "-c", "echo out; echo err >&2; exit 3"], fifos)
    client.start(container_id, "e1")
    assert client.wait(container_id, "e1") == 3
    out, out_eof = fifos.read_until_eof("stdout", EOF_TIMEOUT_S)
    err, err_eof = fifos.read_until_eof("stderr", EOF_TIMEOUT_S)
    assert (out, out_eof) == (b"out\n", True), "no EOF on the exec's stdout before Delete"
    assert (err, err_eof) == (b"err\n", True), "no EOF on the exec's stderr before Delete"
    assert client.delete_process(container_id, "e1").exit_status == 3
    fifos.close()


def test_exec_of_a_missing_command_fails_at_start_and_is_deleted(
        client: ContainerdClient, make_container: MakeContainer) -> None:
    """What the kubelet's ``kubectl exec <pod> -- nosuchcmd`` does through containerd's CRI:
    Start fails at once with runc's error, then (``WithProcessKill``) Wait, Kill and Delete,
    which must all return at once: runc.v2 ends the wait of an exec that never started."""
    container_id = _running(client, make_container)
    fifos = client.fifos(f"{container_id}-missing")
    client.exec(container_id, "missing", ["/no/such/command"], fifos)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError, match=r"no such file or directory|not found"):
        client.start(container_id, "missing")
    assert time.monotonic() - started < 10
    waited = time.monotonic()
    status = client.wait(container_id, "missing", timeout=20)
    with contextlib.suppress(grpc.RpcError):  # runc.v2: NotFound, the process never ran
        client.kill(container_id, 9, "missing", all=True)
    client.delete_process(container_id, "missing")
    assert time.monotonic() - waited < 10
    print(f"exit status of an exec that never started: {status}")
    fifos.close()


def test_init_output_ends_before_delete(client: ContainerdClient,
                                        make_container: MakeContainer) -> None:
    container_id = make_container(["sh", "-c", "echo hello; echo oops >&2"])
    fifos = client.fifos(container_id)
    client.create_task(container_id, fifos)
    client.start(container_id)
    assert client.wait(container_id) == 0
    assert fifos.read_until_eof("stdout", EOF_TIMEOUT_S) == (b"hello\n", True)
    assert fifos.read_until_eof("stderr", EOF_TIMEOUT_S) == (b"oops\n", True)
    client.delete(container_id)
    fifos.close()


def test_exec_stdin_reaches_the_process(client: ContainerdClient,
                                        make_container: MakeContainer) -> None:
    container_id = _running(client, make_container)
    fifos = client.fifos(f"{container_id}-cat", stdin=True)
    client.exec(container_id, "cat", ["cat"], fifos)
    client.start(container_id, "cat")
    fifos.write_stdin(b"ping\n")
    fifos.end_stdin()  # as containerd's client: its FIFO end first, then CloseIO
    client.close_stdin(container_id, "cat")
    assert client.wait(container_id, "cat") == 0
    assert fifos.read_until_eof("stdout", EOF_TIMEOUT_S) == (b"ping\n", True)
    client.delete_process(container_id, "cat")
    fifos.close()


# --- 2. terminals --------------------------------------------------------------------------


def test_terminal_container_needs_no_stderr_fifo(client: ContainerdClient,
                                                 make_container: MakeContainer) -> None:
    container_id = make_container(["sh", "-c", "echo on-a-tty; exit 5"], tty=True)
    fifos = client.fifos(container_id, terminal=True)
    assert not Path(fifos.path("stderr")).exists()  # as the Go client: none for a terminal
    client.create_task(container_id, fifos)
    client.start(container_id)
    assert client.wait(container_id) == 5
    out, eof = fifos.read_until_eof("stdout", EOF_TIMEOUT_S)
    assert eof and out.replace(b"\r", b"") == b"on-a-tty\n"
    client.delete(container_id)
    fifos.close()


def test_exec_with_terminal(client: ContainerdClient, make_container: MakeContainer) -> None:
    container_id = _running(client, make_container)
    fifos = client.fifos(f"{container_id}-t", terminal=True, stdin=True)
    client.exec(container_id, "t", ["sh", "-c", "sleep 0.2; stty size; exit 4"], fifos)
    client.start(container_id, "t")
    client.resize_pty(container_id, 100, 30, exec_id="t")
    assert client.wait(container_id, "t") == 4
    out, eof = fifos.read_until_eof("stdout", EOF_TIMEOUT_S)
    assert eof and out.replace(b"\r", b"") == b"30 100\n"
    client.delete_process(container_id, "t")
    fifos.close()


def test_exec_with_terminal_large_output_arrives_whole(
        client: ContainerdClient, make_container: MakeContainer) -> None:
    container_id = _running(client, make_container)
    fifos = client.fifos(f"{container_id}-big", terminal=True)
    client.exec(container_id, "big", ["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' a"],
                fifos)
    client.start(container_id, "big")
    out, eof = fifos.read_until_eof("stdout", 60)
    assert client.wait(container_id, "big") == 0
    assert eof and out == b"a" * 1048576, f"got {len(out)} bytes, eof={eof}"
    client.delete_process(container_id, "big")
    fifos.close()


def test_resize_pty_without_terminal_is_a_no_op(client: ContainerdClient,
                                                make_container: MakeContainer) -> None:
    container_id = _running(client, make_container)
    client.resize_pty(container_id, 80, 24)  # raises on an error status


# --- 3. kill -------------------------------------------------------------------------------


@pytest.mark.parametrize("host_pid", [False, True], ids=["own-pidns", "host-pidns"])
def test_sigkill_leaves_no_process_behind(client: ContainerdClient,
                                          make_container: MakeContainer,
                                          host_pid: bool) -> None:
    container_id = _running(
        client, make_container,
        ["sh", "-c", "sleep 100 & sleep 100 & while true; do sleep 1; done"], host_pid=host_pid)
    deadline = time.monotonic() + 10
    while len(pids := client.pids(container_id)) < 3:
        assert time.monotonic() < deadline, f"children did not start: {pids}"
        time.sleep(0.02)
    client.kill(container_id, 9)
    assert client.wait(container_id) == 137
    time.sleep(0.1)
    alive = [pid for pid in pids if is_alive(pid)]
    assert not alive, f"processes of the container outlived the reported exit: {alive}"


# --- 4. checkpoint and restore through containerd's API ------------------------------------

# The count lives in the shell's memory; it is written out only when asked (SIGUSR1), so no
# file is open or changing at the checkpoint (CRIU refuses to restore a file that changed).
COUNTER = ["sh", "-c", "i=0; trap 'echo $i > /tmp/n' USR1; "
                       "while true; do i=$((i+1)); sleep 0.05; done"]


@pytest.fixture
def legacy_option_types(runtime: str, lab_containerd: PrivateContainerd) -> bool:
    """Whether this daemon's own client would send the v1 ``containerd.linux.runc`` option
    types for this runtime: containerd 1.x's does for runtime names that are not runc's;
    2.x dropped those types (its daemon cannot even decode them)."""
    return runtime == ZEROPOD_RUNTIME and lab_containerd.major_version < 2


def _checkpoint_options(legacy: bool, *, exit: bool = False) -> Any:
    if legacy:
        return typeurl.pack(linux_runc.CheckpointOptions(exit=exit))
    return typeurl.pack(runc_options.CheckpointOptions(exit=exit))


def _read_counter(client: ContainerdClient, container_id: str, exec_id: str) -> int:
    fifos = client.fifos(f"{container_id}-{exec_id}")
    client.exec(container_id, exec_id, ["sh", "-c", "rm -f /tmp/n; kill -USR1 1; "
                                        "while [ ! -s /tmp/n ]; do sleep 0.01; done; cat /tmp/n"],
                fifos)
    client.start(container_id, exec_id)
    client.wait(container_id, exec_id)
    out, _ = fifos.read_until_eof("stdout", EOF_TIMEOUT_S)
    client.delete_process(container_id, exec_id)
    fifos.close()
    return int(out)


def test_checkpoint_and_restore_through_the_api(legacy_option_types: bool,
                                                client: ContainerdClient,
                                                make_container: MakeContainer) -> None:
    container_id = _running(client, make_container, COUNTER)
    time.sleep(0.3)
    client.pause(container_id)  # the Go client pauses around a checkpoint
    try:
        image = client.checkpoint(container_id, _checkpoint_options(legacy_option_types))
    finally:
        client.resume(container_id)
    before = _read_counter(client, container_id, "r1")
    assert client.get(container_id).status == 2, "a checkpoint without exit leaves it running"
    client.kill(container_id, 9)
    client.wait(container_id)
    client.delete(container_id)
    fifos = client.fifos(f"{container_id}-restored")
    assert client.create_task(container_id, fifos, checkpoint=image) == 0  # pid once started
    pid = client.start(container_id)
    assert pid > 0 and client.get(container_id).pid == pid
    restored = _read_counter(client, container_id, "r2")
    assert restored >= 2, "the restored task started from scratch instead of the image"
    assert restored <= before + 40, f"counter {restored} does not continue from {before}"
    fifos.close()


def test_checkpoint_with_exit_stops_the_task(legacy_option_types: bool,
                                             client: ContainerdClient,
                                             make_container: MakeContainer) -> None:
    container_id = _running(client, make_container, COUNTER)
    client.checkpoint(container_id, _checkpoint_options(legacy_option_types, exit=True))
    client.wait(container_id, timeout=20)
    assert client.get(container_id).status == 3


# --- 5. options typed by runtime name -------------------------------------------------------


def test_create_options_io_owner(legacy_option_types: bool, client: ContainerdClient,
                                 make_container: MakeContainer) -> None:
    """io_uid/io_gid own the process's stdio pipes, so a container running as that user can
    reopen them (``/dev/stdout``). Sent in either option type containerd 1.6's client uses
    (v1 ``containerd.linux.runc.CreateOptions`` for runtime names that are not runc's)."""
    container_id = make_container(["sh", "-c", "echo reopened > /proc/self/fd/1"],
                                  user=(1234, 4321))
    packed = typeurl.pack(linux_runc.CreateOptions(io_uid=1234, io_gid=4321)) \
        if legacy_option_types else \
        typeurl.pack(runc_options.Options(io_uid=1234, io_gid=4321))
    fifos = client.fifos(container_id)
    client.create_task(container_id, fifos, options=packed)
    client.start(container_id)
    assert client.wait(container_id) == 0
    assert fifos.read_until_eof("stdout", EOF_TIMEOUT_S) == (b"reopened\n", True)
    client.delete(container_id)
    fifos.close()


def test_create_options_shim_cgroup(runtime: str, legacy_option_types: bool,
                                    client: ContainerdClient,
                                    lab_containerd: PrivateContainerd,
                                    make_container: MakeContainer) -> None:
    """``shim_cgroup`` (containerd's ``WithShimCgroup``) puts the shim into that cgroup."""
    cgroup = f"{lab_containerd.cgroup_parent}/shim-{runtime.split('.')[2]}"
    created = []
    for hierarchy in ("devices", "memory", "pids"):
        folder = Path("/sys/fs/cgroup") / hierarchy / cgroup
        folder.mkdir(parents=True, exist_ok=True)
        created.append(folder)
    container_id = make_container(["sleep", "30"])
    packed = typeurl.pack(linux_runc.CreateOptions(shim_cgroup="/" + cgroup)) \
        if legacy_option_types else \
        typeurl.pack(runc_options.Options(shim_cgroup="/" + cgroup))
    fifos = client.fifos(container_id)
    client.create_task(container_id, fifos, options=packed)
    members = (created[0] / "cgroup.procs").read_text().split()
    assert members, "the shim did not join the cgroup named in shim_cgroup"
    assert all(Path(f"/proc/{pid}/cmdline").read_bytes().find(b"shim") >= 0 for pid in members)
    fifos.close()


@pytest.mark.parametrize("runtime", [ZEROPOD_RUNTIME])  # runc.v2 panics on this
def test_unknown_create_options_fail_clearly(runtime: str, client: ContainerdClient,
                                             lab_containerd: PrivateContainerd,
                                             make_container: MakeContainer) -> None:
    container_id = make_container(["true"])
    fifos = client.fifos(container_id)
    with pytest.raises(grpc.RpcError) as caught:
        client.create_task(container_id, fifos,
                           options=typeurl.pack(runc_options.ProcessDetails(exec_id="x")))
    if lab_containerd.major_version < 2:  # 2.x rejects unknown types before the shim
        assert "containerd.runc.v1.ProcessDetails" in str(caught.value.details())
    fifos.close()
