"""The stream a client-streaming or bidirectional handler reads from and writes to.

The connection's reader puts each data frame's payload into the stream's queue; the handler
takes them out at its own pace. The queue is bounded (Go: ``streamRecvBufferSize``): a handler
that stops reading gets its stream failed instead of making the connection buffer without end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

from google.protobuf.message import Message

from zeropod_core.ttrpc._codec import decode, encode
from zeropod_core.ttrpc.errors import Internal

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)

RECV_BUFFER: Final = 64
"""Data messages a stream holds before the sender is told it is full (Go uses 64 too)."""
FULL_TIMEOUT: Final = 1.0
"""Seconds the connection's reader waits for room in a full stream before failing it."""

_END: Final = None


class ServerStream(Generic[ReqT, RespT]):
    """Requests in (``recv`` / ``async for``), responses out (``send``)."""

    def __init__(
        self,
        request_type: type[ReqT],
        response_type: type[RespT],
        send_payload: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self._request_type = request_type
        self._response_type = response_type
        self._send_payload = send_payload
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(RECV_BUFFER)
        self._remote_closed = False
        self._ended = False

    async def recv(self) -> ReqT:
        """The next request message; raises EOFError once the client closed its side."""
        if self._ended:
            raise EOFError("ttrpc: stream closed by the client")
        payload = await self._queue.get()
        if payload is _END:
            self._ended = True
            raise EOFError("ttrpc: stream closed by the client")
        return decode(self._request_type, payload)

    def __aiter__(self) -> ServerStream[ReqT, RespT]:
        return self

    async def __anext__(self) -> ReqT:
        try:
            return await self.recv()
        except EOFError:
            raise StopAsyncIteration from None

    async def send(self, message: RespT) -> None:
        """Send one response message to the client as a data frame."""
        await self._send_payload(encode(message, self._response_type))

    # --- used by the connection ---------------------------------------------------------

    @property
    def remote_closed(self) -> bool:
        return self._remote_closed

    def open(self, first: bytes, closed: bool) -> None:
        """Queue what the opening request carried, before any data frame can arrive.

        Go delivers a request's payload as the stream's first message when there is one; a
        request flagged remote-closed means no data frames follow.
        """
        if first:
            self._queue.put_nowait(first)
        if closed:
            self._remote_closed = True
            self._queue.put_nowait(_END)

    async def feed(self, payload: bytes | None) -> bool:
        """Queue one received message (None: the client's end of stream).

        Waits up to :data:`FULL_TIMEOUT` for the handler to make room, as Go does before it
        gives up on a stream (``streamFullTimeout``); False means the stream must fail.
        """
        if payload is _END:
            if self._remote_closed:
                return True
            self._remote_closed = True
        elif self._remote_closed:
            raise Internal("ttrpc: stream closed")
        try:
            await asyncio.wait_for(self._queue.put(payload), FULL_TIMEOUT)
        except TimeoutError:
            return False
        return True
