"""How a service declares its methods: typed method records, and a builder from a descriptor.

A server holds ``{service name: {method name: method}}``. Each method record names the request
and response message classes, so the server decodes the request before the handler runs and
checks the response type after, and handlers deal only in messages. The four kinds mirror what
ttrpc supports: unary, server streaming, client streaming and both (``StreamDesc`` in Go).
:class:`RawUnary` is for handlers that want the bytes (proxies, tests).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from zeropod_core.ttrpc.context import CallContext
from zeropod_core.ttrpc.server_stream import ServerStream

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)


@dataclass(frozen=True, slots=True)
class Unary(Generic[ReqT, RespT]):
    """One request, one response."""

    request_type: type[ReqT]
    response_type: type[RespT]
    handler: Callable[[CallContext, ReqT], Awaitable[RespT]]


@dataclass(frozen=True, slots=True)
class ServerStreaming(Generic[ReqT, RespT]):
    """One request; the handler yields responses (e.g. an async generator) until done."""

    request_type: type[ReqT]
    response_type: type[RespT]
    handler: Callable[[CallContext, ReqT], AsyncIterator[RespT]]


@dataclass(frozen=True, slots=True)
class ClientStreaming(Generic[ReqT, RespT]):
    """The handler reads requests from the stream and returns one response."""

    request_type: type[ReqT]
    response_type: type[RespT]
    handler: Callable[[CallContext, ServerStream[ReqT, RespT]], Awaitable[RespT]]


@dataclass(frozen=True, slots=True)
class BidiStreaming(Generic[ReqT, RespT]):
    """The handler reads and sends on the stream freely; returning ends the stream."""

    request_type: type[ReqT]
    response_type: type[RespT]
    handler: Callable[[CallContext, ServerStream[ReqT, RespT]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RawUnary:
    """A unary method on undecoded payload bytes."""

    handler: Callable[[CallContext, bytes], Awaitable[bytes]]


Method: TypeAlias = (
    Unary[Any, Any]
    | ServerStreaming[Any, Any]
    | ClientStreaming[Any, Any]
    | BidiStreaming[Any, Any]
    | RawUnary
)
"""Any method record a server can register."""


def streaming_client(method: Method) -> bool:
    """Whether the client sends data frames after its request on this method."""
    return isinstance(method, ClientStreaming | BidiStreaming)


def service_methods(descriptor: ServiceDescriptor, implementation: object) -> dict[str, Method]:
    """The method table of ``descriptor``'s service, served by ``implementation``'s methods.

    For each RPC, ``implementation`` provides a coroutine function named like the RPC (``Create``)
    or its snake_case form (``create``, ``close_io``); the kind of record follows the RPC's
    ``stream`` markers. RPCs without an implementation are left out, so the server answers them
    with Unimplemented as Go does. This saves hand-writing request/response classes that the
    generated descriptor already knows.
    """
    methods: dict[str, Method] = {}
    for rpc in descriptor.methods:
        handler = getattr(implementation, rpc.name, None) or getattr(
            implementation, snake_case(rpc.name), None
        )
        if handler is None:
            continue
        request_type = message_factory.GetMessageClass(rpc.input_type)
        response_type = message_factory.GetMessageClass(rpc.output_type)
        client_streams = bool(getattr(rpc, "client_streaming", False))
        server_streams = bool(getattr(rpc, "server_streaming", False))
        record: Method
        if client_streams and server_streams:
            record = BidiStreaming(request_type, response_type, handler)
        elif client_streams:
            record = ClientStreaming(request_type, response_type, handler)
        elif server_streams:
            record = ServerStreaming(request_type, response_type, handler)
        else:
            record = Unary(request_type, response_type, handler)
        methods[rpc.name] = record
    return methods


_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``ResizePty`` -> ``resize_pty``, ``CloseIO`` -> ``close_io``."""
    return _WORD_BOUNDARY.sub("_", name).lower()


def method_table(methods: Mapping[str, Method]) -> dict[str, Method]:
    """A checked copy of a method table: every value must be a method record."""
    table: dict[str, Method] = {}
    for name, method in methods.items():
        if not isinstance(
            method, Unary | ServerStreaming | ClientStreaming | BidiStreaming | RawUnary
        ):
            raise TypeError(f"method {name!r}: {method!r} is not a ttrpc method record")
        table[name] = method
    return table
