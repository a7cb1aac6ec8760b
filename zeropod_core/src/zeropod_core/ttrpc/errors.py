"""ttrpc status codes and the Python exceptions that stand for them.

A ttrpc response carries a ``google.rpc.Status``; containerd turns its code back into its own
error kinds (``errdefs.FromGRPC``: NotFound, AlreadyExists, FailedPrecondition, ...), and it
decides from them whether to retry, ignore or fail. So a handler must be able to choose the code,
which it does by raising one of the classes below, and a client must be able to tell codes apart,
which it does by catching them. Exceptions that are not :class:`RPCError` are mapped the way the
Go server maps plain Go errors (``convertCode`` in ttrpc's services.go): mostly ``Unknown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from enum import IntEnum
from typing import Final

from google.protobuf import any_pb2


class Code(IntEnum):
    """The google.rpc.Code values (the numbers are on the wire)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RPCError(Exception):
    """An error with a status code: raised by handlers to answer with that code, and raised by
    the client when a response carries a code other than OK.

    ``str()`` is the bare status message, because containerd shows the message as it is.
    """

    code: Code = Code.UNKNOWN

    def __init__(self, message: str = "", *, details: Sequence[any_pb2.Any] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details: tuple[any_pb2.Any, ...] = tuple(details)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Cancelled(RPCError):
    code = Code.CANCELLED


class Unknown(RPCError):
    code = Code.UNKNOWN


class InvalidArgument(RPCError):
    code = Code.INVALID_ARGUMENT


class DeadlineExceeded(RPCError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(RPCError):
    code = Code.NOT_FOUND


class AlreadyExists(RPCError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(RPCError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(RPCError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(RPCError):
    code = Code.FAILED_PRECONDITION


class Aborted(RPCError):
    code = Code.ABORTED


class OutOfRange(RPCError):
    code = Code.OUT_OF_RANGE


class Unimplemented(RPCError):
    code = Code.UNIMPLEMENTED


class Internal(RPCError):
    code = Code.INTERNAL


class Unavailable(RPCError):
    code = Code.UNAVAILABLE


class DataLoss(RPCError):
    code = Code.DATA_LOSS


class Unauthenticated(RPCError):
    code = Code.UNAUTHENTICATED


class ConnectionClosed(Unavailable):
    """The connection went away (Go: ``ttrpc.ErrClosed``); pending calls fail with this."""

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(message)


class ProtocolError(Internal):
    """The peer sent something the protocol does not allow (Go: ``ttrpc.ErrProtocol``)."""


_BY_CODE: Final[dict[int, type[RPCError]]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}

# The Go messages of context.DeadlineExceeded and context.Canceled, which containerd logs.
DEADLINE_MESSAGE: Final = "context deadline exceeded"
CANCELLED_MESSAGE: Final = "context canceled"


def from_status(code: int, message: str, details: Sequence[any_pb2.Any] = ()) -> RPCError:
    """The exception for a received status (``code`` must not be OK).

    A code outside google.rpc.Code becomes :class:`Unknown`, with the number kept in the message
    so that nothing the peer said is lost.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        return Unknown(f"{message} (status code {code})", details=details)
    return cls(message, details=details)


def to_status(exc: BaseException) -> tuple[Code, str, tuple[any_pb2.Any, ...]]:
    """The status (code, message, details) to answer with when a handler raised ``exc``.

    Mirrors Go's ``convertCode`` for the errors Python has equivalents of, so containerd sees the
    same codes from this shim as from runc's.
    """
    if isinstance(exc, RPCError):
        return exc.code, exc.message, exc.details
    if isinstance(exc, TimeoutError):
        return Code.DEADLINE_EXCEEDED, DEADLINE_MESSAGE, ()
    if isinstance(exc, asyncio.CancelledError):
        return Code.CANCELLED, CANCELLED_MESSAGE, ()
    message = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return Code.NOT_FOUND, message, ()
    if isinstance(exc, FileExistsError):
        return Code.ALREADY_EXISTS, message, ()
    if isinstance(exc, PermissionError):
        return Code.PERMISSION_DENIED, message, ()
    if isinstance(exc, NotImplementedError):
        return Code.UNIMPLEMENTED, message, ()
    if isinstance(exc, EOFError):
        return Code.OUT_OF_RANGE, message, ()
    return Code.UNKNOWN, message, ()
