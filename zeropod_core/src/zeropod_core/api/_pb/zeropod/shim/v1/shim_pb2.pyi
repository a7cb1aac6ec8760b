# mypy: disable-error-code="type-arg"
import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContainerPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALED_DOWN: _ClassVar[ContainerPhase]
    RUNNING: _ClassVar[ContainerPhase]
    STOPPING: _ClassVar[ContainerPhase]
    CHECKPOINT_FAILED: _ClassVar[ContainerPhase]
    RESTORE_FAILED: _ClassVar[ContainerPhase]
SCALED_DOWN: ContainerPhase
RUNNING: ContainerPhase
STOPPING: ContainerPhase
CHECKPOINT_FAILED: ContainerPhase
RESTORE_FAILED: ContainerPhase

class LiveMigrateRequest(_message.Message):
    __slots__ = ("id", "page_server_port")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    page_server_port: int
    def __init__(self, id: _Optional[str] = ..., page_server_port: _Optional[int] = ...) -> None: ...

class LiveMigrateEvent(_message.Message):
    __slots__ = ("stage", "time", "image_bytes", "duration", "error")
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        READY: _ClassVar[LiveMigrateEvent.Stage]
        DONE: _ClassVar[LiveMigrateEvent.Stage]
        FAILED: _ClassVar[LiveMigrateEvent.Stage]
    READY: LiveMigrateEvent.Stage
    DONE: LiveMigrateEvent.Stage
    FAILED: LiveMigrateEvent.Stage
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    stage: LiveMigrateEvent.Stage
    time: _timestamp_pb2.Timestamp
    image_bytes: int
    duration: _duration_pb2.Duration
    error: str
    def __init__(self, stage: _Optional[_Union[LiveMigrateEvent.Stage, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image_bytes: _Optional[int] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("empty",)
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    empty: _empty_pb2.Empty
    def __init__(self, empty: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ...) -> None: ...

class SubscribeStatusRequest(_message.Message):
    __slots__ = ("empty",)
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    empty: _empty_pb2.Empty
    def __init__(self, empty: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[ContainerMetrics]
    def __init__(self, metrics: _Optional[_Iterable[_Union[ContainerMetrics, _Mapping]]] = ...) -> None: ...

class ContainerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ContainerStatus(_message.Message):
    __slots__ = ("id", "name", "pod_name", "pod_namespace", "phase", "event_time", "event_duration", "event_log", "dry_run")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_DURATION_FIELD_NUMBER: _ClassVar[int]
    EVENT_LOG_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    pod_name: str
    pod_namespace: str
    phase: ContainerPhase
    event_time: _timestamp_pb2.Timestamp
    event_duration: _duration_pb2.Duration
    event_log: str
    dry_run: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., pod_name: _Optional[str] = ..., pod_namespace: _Optional[str] = ..., phase: _Optional[_Union[ContainerPhase, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., event_log: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ContainerMetrics(_message.Message):
    __slots__ = ("name", "pod_name", "pod_namespace", "last_checkpoint", "last_restore", "last_checkpoint_duration", "last_restore_duration", "running", "checkpoint_errors", "restore_errors", "dry_run_scale_downs", "dry_run_restores", "dry_run", "id", "samples", "image_bytes", "last_wake_latency")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_RESTORE_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_DURATION_FIELD_NUMBER: _ClassVar[int]
    LAST_RESTORE_DURATION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_SCALE_DOWNS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_RESTORES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_WAKE_LATENCY_FIELD_NUMBER: _ClassVar[int]
    name: str
    pod_name: str
    pod_namespace: str
    last_checkpoint: _timestamp_pb2.Timestamp
    last_restore: _timestamp_pb2.Timestamp
    last_checkpoint_duration: _duration_pb2.Duration
    last_restore_duration: _duration_pb2.Duration
    running: bool
    checkpoint_errors: int
    restore_errors: int
    dry_run_scale_downs: int
    dry_run_restores: int
    dry_run: bool
    id: str
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    image_bytes: int
    last_wake_latency: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., pod_name: _Optional[str] = ..., pod_namespace: _Optional[str] = ..., last_checkpoint: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_restore: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_checkpoint_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., last_restore_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., running: _Optional[bool] = ..., checkpoint_errors: _Optional[int] = ..., restore_errors: _Optional[int] = ..., dry_run_scale_downs: _Optional[int] = ..., dry_run_restores: _Optional[int] = ..., dry_run: _Optional[bool] = ..., id: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., image_bytes: _Optional[int] = ..., last_wake_latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("name", "kind", "value", "labels", "bucket_bounds", "bucket_counts", "count")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    value: float
    labels: _containers.ScalarMap[str, str]
    bucket_bounds: _containers.RepeatedScalarFieldContainer[float]
    bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    count: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., value: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., bucket_bounds: _Optional[_Iterable[float]] = ..., bucket_counts: _Optional[_Iterable[int]] = ..., count: _Optional[int] = ...) -> None: ...
