"""The shim API messages encode to the bytes containerd's Go code produces for the same values.

Only field numbers and wire types reach the wire, so each test encodes a message and walks the
bytes with a small independent decoder, comparing tags with the numbers in containerd's .proto
files; a few short messages are also compared byte for byte.
"""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from zeropod_core.api import (
    cgroups_v1,
    events,
    events_service,
    mount,
    runc_options,
    task,
    task_types,
    typeurl,
    zeropod_shim,
)
from zeropod_core.api._pb.ttrpc import request_pb2

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def walk(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field, in wire order."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _varint(data, pos)
        elif wire_type == LEN:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == I64:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == I32:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def sub(fields: list[tuple[int, int, int | bytes]], number: int) -> bytes:
    """The bytes of the one length-delimited field ``number``."""
    (value,) = [v for n, t, v in fields if n == number and t == LEN]
    assert isinstance(value, bytes)
    return value


TS = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5)


def test_ttrpc_request_and_response_bytes() -> None:
    request = request_pb2.Request(
        service="s", method="m", payload=b"p", timeout_nano=5, metadata=[{"key": "k", "value": "v"}]
    )
    assert request.SerializeToString() == bytes.fromhex("0a017312016d1a017020052a060a016b120176")
    response = request_pb2.Response(status=request_pb2.Status(code=5, message="nf"), payload=b"x")
    assert response.SerializeToString() == bytes.fromhex("0a06080512026e66120178")


def test_create_task_request() -> None:
    options = runc_options.Options(binary_name="runc", root="/run/runc", systemd_cgroup=True)
    request = task.CreateTaskRequest(
        id="c1",
        bundle="/run/containerd/b",
        rootfs=[
            mount.Mount(type="overlay", source="overlay", options=["lowerdir=/l", "upperdir=/u"])
        ],
        stdin="/fifo/in",
        stdout="/fifo/out",
        stderr="/fifo/err",
        terminal=True,
        checkpoint="/cp",
        options=typeurl.pack(options),
    )
    fields = walk(request.SerializeToString())
    assert [(n, t) for n, t, _ in fields] == [
        (1, LEN),
        (2, LEN),
        (3, LEN),
        (4, VARINT),
        (5, LEN),
        (6, LEN),
        (7, LEN),
        (8, LEN),
        (10, LEN),
    ]
    assert fields[0][2] == b"c1" and fields[1][2] == b"/run/containerd/b"
    assert walk(sub(fields, 3)) == [
        (1, LEN, b"overlay"),
        (2, LEN, b"overlay"),
        (4, LEN, b"lowerdir=/l"),
        (4, LEN, b"upperdir=/u"),
    ]
    packed = walk(sub(fields, 10))
    assert packed[0] == (1, LEN, b"containerd.runc.v1.Options")
    assert walk(sub(packed, 2)) == [(6, LEN, b"runc"), (7, LEN, b"/run/runc"), (9, VARINT, 1)]


def test_small_messages_byte_for_byte() -> None:
    assert task.CreateTaskRequest(id="c1", bundle="/b").SerializeToString() == bytes.fromhex(
        "0a02633112022f62"
    )
    state = task.StateResponse(
        id="c1", pid=42, status=task_types.RUNNING, exec_id="e", exit_status=0
    )
    assert state.SerializeToString() == bytes.fromhex("0a026331182a20025a0165")
    kill = task.KillRequest(id="c", signal=9, all=True)
    assert kill.SerializeToString() == bytes.fromhex("0a016318092001")
    connect = task.ConnectResponse(shim_pid=1, task_pid=2, version="v")
    assert connect.SerializeToString() == bytes.fromhex("080110021a0176")
    deleted = task.DeleteResponse(
        pid=7, exit_status=137, exited_at=timestamp_pb2.Timestamp(seconds=1)
    )
    assert deleted.SerializeToString() == bytes.fromhex("08071089011a020801")
    shutdown = task.ShutdownRequest(id="c", now=True)
    assert shutdown.SerializeToString() == bytes.fromhex("0a01631001")


def test_exec_update_and_pids() -> None:
    exec_request = task.ExecProcessRequest(
        id="c", exec_id="e", terminal=True, stdin="i", stdout="o", stderr="r"
    )
    exec_request.spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process"
    exec_request.spec.value = b"{}"
    assert [n for n, _, _ in walk(exec_request.SerializeToString())] == [1, 2, 3, 4, 5, 6, 7]
    update = task.UpdateTaskRequest(id="c", annotations={"a": "b"})
    update.resources.type_url = "x"
    fields = walk(update.SerializeToString())
    assert [n for n, _, _ in fields] == [1, 2, 3]
    assert walk(sub(fields, 3)) == [(1, LEN, b"a"), (2, LEN, b"b")]  # map entry key=1 value=2
    pids = task.PidsResponse(processes=[task_types.ProcessInfo(pid=9)])
    assert pids.SerializeToString() == bytes.fromhex("0a020809")
    resize = task.ResizePtyRequest(id="c", exec_id="e", width=80, height=24)
    assert [n for n, _, _ in walk(resize.SerializeToString())] == [1, 2, 3, 4]
    checkpoint = task.CheckpointTaskRequest(id="c", path="/p")
    checkpoint.options.type_url = "containerd.runc.v1.CheckpointOptions"
    assert [n for n, _, _ in walk(checkpoint.SerializeToString())] == [1, 2, 3]


def test_wait_and_stats() -> None:
    wait = task.WaitResponse(exit_status=1, exited_at=TS)
    assert [(n, t) for n, t, _ in walk(wait.SerializeToString())] == [(1, VARINT), (2, LEN)]
    metrics = cgroups_v1.Metrics(
        pids=cgroups_v1.PidsStat(current=3, limit=10),
        cpu=cgroups_v1.CPUStat(usage=cgroups_v1.CPUUsage(total=1000, kernel=1, user=2)),
        memory=cgroups_v1.MemoryStat(
            total_rss=5, usage=cgroups_v1.MemoryEntry(limit=8192, usage=4096)
        ),
    )
    stats = task.StatsResponse(stats=typeurl.pack(metrics))
    packed = walk(sub(walk(stats.SerializeToString()), 1))
    assert packed[0] == (1, LEN, b"io.containerd.cgroups.v1.Metrics")
    fields = walk(sub(packed, 2))
    assert [n for n, _, _ in fields] == [2, 3, 4]
    assert walk(sub(fields, 2)) == [(1, VARINT, 3), (2, VARINT, 10)]
    assert walk(sub(walk(sub(fields, 3)), 1)) == [(1, VARINT, 1000), (2, VARINT, 1), (3, VARINT, 2)]
    memory = walk(sub(fields, 4))
    assert memory[0] == (19, VARINT, 5)
    assert walk(sub(memory, 33)) == [(1, VARINT, 8192), (2, VARINT, 4096)]


def test_forward_request_with_task_exit() -> None:
    exit_event = events.TaskExit(container_id="c", id="c", pid=5, exit_status=137, exited_at=TS)
    assert [n for n, _, _ in walk(exit_event.SerializeToString())] == [1, 2, 3, 4, 5]
    forward = events_service.ForwardRequest(
        envelope=events_service.Envelope(
            timestamp=TS, namespace="k8s.io", topic="/tasks/exit", event=typeurl.pack(exit_event)
        )
    )
    envelope = walk(sub(walk(forward.SerializeToString()), 1))
    assert [n for n, _, _ in envelope] == [1, 2, 3, 4]
    assert envelope[1][2] == b"k8s.io" and envelope[2][2] == b"/tasks/exit"
    assert walk(sub(envelope, 1)) == [(1, VARINT, 1_700_000_000), (2, VARINT, 5)]
    packed = walk(sub(envelope, 4))
    assert packed[0] == (1, LEN, b"containerd.events.TaskExit")
    assert events.TaskExit.FromString(sub(packed, 2)) == exit_event


def test_task_events() -> None:
    create = events.TaskCreate(
        container_id="c",
        bundle="/b",
        rootfs=[mount.Mount(type="bind")],
        io=events.TaskIO(stdin="i", stdout="o", stderr="e", terminal=True),
        checkpoint="cp",
        pid=3,
    )
    fields = walk(create.SerializeToString())
    assert [n for n, _, _ in fields] == [1, 2, 3, 4, 5, 6]
    assert [n for n, _, _ in walk(sub(fields, 4))] == [1, 2, 3, 4]
    delete = events.TaskDelete(container_id="c", pid=1, exit_status=2, exited_at=TS, id="e")
    assert [n for n, _, _ in walk(delete.SerializeToString())] == [1, 2, 3, 4, 5]
    started = events.TaskExecStarted(container_id="c", exec_id="e", pid=4)
    assert started.SerializeToString() == bytes.fromhex("0a01631201651804")
    assert events.TaskStart(container_id="c", pid=4).SerializeToString() == bytes.fromhex(
        "0a01631004"
    )
    checkpointed = events.TaskCheckpointed(container_id="c", checkpoint="x")
    assert checkpointed.SerializeToString() == bytes.fromhex("0a0163120178")
    for single in (events.TaskOOM, events.TaskPaused, events.TaskResumed):
        assert single(container_id="c").SerializeToString() == bytes.fromhex("0a0163")


def test_runc_options_field_numbers() -> None:
    options = runc_options.Options(
        no_pivot_root=True,
        no_new_keyring=True,
        shim_cgroup="s",
        io_uid=1,
        io_gid=2,
        binary_name="b",
        root="r",
        criu_path="c",
        systemd_cgroup=True,
        criu_image_path="i",
        criu_work_path="w",
    )
    assert [n for n, _, _ in walk(options.SerializeToString())] == list(range(1, 12))


def test_zeropod_container_status_field_numbers() -> None:
    status = zeropod_shim.ContainerStatus(
        id="c",
        name="n",
        pod_name="p",
        pod_namespace="ns",
        phase=zeropod_shim.RESTORE_FAILED,
        event_time=TS,
        event_duration=duration_pb2.Duration(nanos=5),
        event_log="criu: error",
        dry_run=True,
    )
    fields = walk(status.SerializeToString())
    assert [n for n, _, _ in fields] == list(range(1, 10))
    assert fields[4] == (5, VARINT, 4)
    metrics = zeropod_shim.MetricsResponse(
        metrics=[zeropod_shim.ContainerMetrics(name="n", running=True, restore_errors=2)]
    )
    inner = walk(sub(walk(metrics.SerializeToString()), 1))
    assert inner == [(1, LEN, b"n"), (8, VARINT, 1), (10, VARINT, 2)]
