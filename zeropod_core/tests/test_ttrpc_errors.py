"""Status codes <-> exceptions, in both directions, without a connection."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import any_pb2

import zeropod_core.ttrpc as ttrpc
from zeropod_core.ttrpc import Code, RPCError, from_status, to_status

EXPECTED_CODES = {
    ttrpc.Cancelled: 1,
    ttrpc.Unknown: 2,
    ttrpc.InvalidArgument: 3,
    ttrpc.DeadlineExceeded: 4,
    ttrpc.NotFound: 5,
    ttrpc.AlreadyExists: 6,
    ttrpc.PermissionDenied: 7,
    ttrpc.ResourceExhausted: 8,
    ttrpc.FailedPrecondition: 9,
    ttrpc.Aborted: 10,
    ttrpc.OutOfRange: 11,
    ttrpc.Unimplemented: 12,
    ttrpc.Internal: 13,
    ttrpc.Unavailable: 14,
    ttrpc.DataLoss: 15,
    ttrpc.Unauthenticated: 16,
}


@pytest.mark.parametrize(("cls", "number"), EXPECTED_CODES.items())
def test_class_codes_are_google_rpc_codes(cls: type[RPCError], number: int) -> None:
    assert cls.code == number
    error = from_status(number, "msg")
    assert type(error) is cls
    assert str(error) == "msg"
    assert to_status(cls("msg")) == (number, "msg", ())


def test_every_code_but_ok_has_a_class() -> None:
    assert {cls.code for cls in EXPECTED_CODES} == set(Code) - {Code.OK}


def test_unknown_code_number_becomes_unknown_and_keeps_the_number() -> None:
    error = from_status(99, "odd")
    assert type(error) is ttrpc.Unknown
    assert "odd" in str(error) and "99" in str(error)


def test_details_travel_with_the_error() -> None:
    detail = any_pb2.Any(type_url="x.Y", value=b"1")
    error = from_status(5, "gone", [detail])
    assert error.details == (detail,)
    assert to_status(error) == (Code.NOT_FOUND, "gone", (detail,))


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (TimeoutError(), Code.DEADLINE_EXCEEDED, "context deadline exceeded"),
        (asyncio.CancelledError(), Code.CANCELLED, "context canceled"),
        (FileNotFoundError(2, "No such file"), Code.NOT_FOUND, "[Errno 2] No such file"),
        (FileExistsError("exists"), Code.ALREADY_EXISTS, "exists"),
        (PermissionError("denied"), Code.PERMISSION_DENIED, "denied"),
        (NotImplementedError(), Code.UNIMPLEMENTED, "NotImplementedError"),
        (EOFError("eof"), Code.OUT_OF_RANGE, "eof"),
        (RuntimeError("boom"), Code.UNKNOWN, "boom"),
        (ValueError(), Code.UNKNOWN, "ValueError"),
    ],
)
def test_plain_exceptions_map_like_go_convert_code(
    exc: BaseException, code: Code, message: str
) -> None:
    assert to_status(exc) == (code, message, ())


def test_connection_closed_is_unavailable() -> None:
    error = ttrpc.ConnectionClosed()
    assert isinstance(error, ttrpc.Unavailable)
    assert str(error) == "ttrpc: closed"
    assert repr(ttrpc.NotFound("x")) == "NotFound('x')"
