"""An asyncio implementation of ttrpc, containerd's RPC protocol for shims.

ttrpc is gRPC's message model (protobuf requests, google.rpc.Status errors, streams) over a much
smaller framing on a unix socket. containerd talks to every shim with it, so the shim imports
this package in every pod: it depends on nothing but the standard library and protobuf.

Server side::

    server = Server()
    server.register("containerd.task.v2.Task", service_methods(TASK_DESCRIPTOR, TaskService()))
    await server.serve_unix(socket_path)
    ...
    await server.shutdown(grace=5)

Client side::

    async with await Client.connect(path) as client:
        reply = await client.call(SERVICE, "Method", request, ReplyType, timeout=5)

Handlers signal errors by raising :class:`RPCError` subclasses (NotFound, AlreadyExists, ...);
clients receive the same classes.
"""

from zeropod_core.ttrpc.client import Client, ClientStream
from zeropod_core.ttrpc.context import CallContext, Metadata
from zeropod_core.ttrpc.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    Code,
    ConnectionClosed,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    RPCError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_status,
    to_status,
)
from zeropod_core.ttrpc.framing import MESSAGE_LENGTH_MAX
from zeropod_core.ttrpc.server import Server
from zeropod_core.ttrpc.server_stream import ServerStream
from zeropod_core.ttrpc.service import (
    BidiStreaming,
    ClientStreaming,
    Method,
    RawUnary,
    ServerStreaming,
    Unary,
    service_methods,
)

__all__ = [
    "MESSAGE_LENGTH_MAX",
    "Aborted",
    "AlreadyExists",
    "BidiStreaming",
    "CallContext",
    "Cancelled",
    "Client",
    "ClientStream",
    "ClientStreaming",
    "Code",
    "ConnectionClosed",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Metadata",
    "Method",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ProtocolError",
    "RPCError",
    "RawUnary",
    "ResourceExhausted",
    "Server",
    "ServerStream",
    "ServerStreaming",
    "Unary",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_status",
    "service_methods",
    "to_status",
]
