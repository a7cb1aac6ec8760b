"""Seconds (as the shim keeps them) to protobuf ``Timestamp`` and ``Duration`` messages."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(at: float) -> Timestamp:
    """``time.time()`` seconds as a Timestamp; 0 (never) stays the empty message."""
    stamp = Timestamp()
    if at:
        stamp.FromNanoseconds(int(at * 1e9))
    return stamp


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value
