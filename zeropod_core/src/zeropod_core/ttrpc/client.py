"""The ttrpc client: many concurrent calls and streams over one connection.

The shim uses it to publish events to containerd (``containerd.services.events.ttrpc.v1``) and
the manager to call shims. Calls are multiplexed by stream id (odd, increasing, allocated under
the write lock so ids reach the wire in order, as containerd's server requires); one reader task
routes every received frame to the call waiting for its stream. A status other than OK is raised
as the matching :class:`~zeropod_core.ttrpc.errors.RPCError` subclass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Final, Generic, TypeVar

from google.protobuf.message import Message

from zeropod_core.api._pb.ttrpc import request_pb2
from zeropod_core.ttrpc._codec import decode
from zeropod_core.ttrpc.context import Metadata
from zeropod_core.ttrpc.errors import (
    DEADLINE_MESSAGE,
    ConnectionClosed,
    DeadlineExceeded,
    ProtocolError,
    ResourceExhausted,
    from_status,
)
from zeropod_core.ttrpc.framing import (
    Flags,
    Frame,
    FramingError,
    MessageType,
    OversizedFrame,
    encode_frame,
    read_frame,
)

log = logging.getLogger("zeropod.ttrpc.client")

RespT = TypeVar("RespT", bound=Message)

MetadataArg = Mapping[str, str | Sequence[str]] | Metadata | None

STREAM_BUFFER: Final = 1024
"""Frames a stream may hold unread before the client gives up on it."""

_MAX_STREAM_ID: Final = 0xFFFFFFFF


class _Inbox:
    """Frames received for one stream, or the error that ended it."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Frame | BaseException] = asyncio.Queue()


class Client:
    """A connection to a ttrpc server. Create with :meth:`connect` or :meth:`from_socket`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._inboxes: dict[int, _Inbox] = {}
        self._next_stream_id = 1
        self._closed = False
        self._close_error: ConnectionClosed | None = None
        self._receiver = asyncio.create_task(self._receive_loop(), name="ttrpc client reader")

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> Client:
        """Connect to the unix socket at ``path`` (a ``unix://`` prefix is accepted)."""
        address = os.fspath(path)
        address = address.removeprefix("unix://")
        reader, writer = await asyncio.open_unix_connection(address)
        return cls(reader, writer)

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> Client:
        """Use an already-connected socket (e.g. half of a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[RespT],
        *,
        timeout: float | None = None,
        metadata: MetadataArg = None,
    ) -> RespT:
        """Call a unary method and return its response.

        ``timeout`` (seconds) is sent to the server as the call's deadline and also bounds the
        wait here; when it passes, :class:`DeadlineExceeded` is raised.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        stream_id, inbox = await self._open(
            _request(service, method, request.SerializeToString(), timeout, metadata), Flags.NONE
        )
        try:
            frame = await _receive(inbox, deadline)
        finally:
            self._inboxes.pop(stream_id, None)
        if frame.type != MessageType.RESPONSE:
            raise ProtocolError(f"unexpected message type {frame.type} received: protocol error")
        response = decode(request_pb2.Response, frame.payload)
        if response.status.code:
            status = response.status
            raise from_status(status.code, status.message, list(status.details))
        return decode(response_type, response.payload)

    async def server_stream(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[RespT],
        *,
        timeout: float | None = None,
        metadata: MetadataArg = None,
    ) -> ClientStream[RespT]:
        """Call a server-streaming method; iterate the result for the responses::

        async with await client.server_stream(SVC, "SubscribeStatus", req, Status) as s:
            async for status in s:
                ...
        """
        return await self.open_stream(
            service,
            method,
            response_type,
            request=request,
            streaming_client=False,
            streaming_server=True,
            timeout=timeout,
            metadata=metadata,
        )

    async def open_stream(
        self,
        service: str,
        method: str,
        response_type: type[RespT],
        *,
        request: Message | None = None,
        streaming_client: bool,
        streaming_server: bool,
        timeout: float | None = None,
        metadata: MetadataArg = None,
    ) -> ClientStream[RespT]:
        """Open a stream of any kind (Go: ``Client.NewStream``).

        A streaming client sends with :meth:`ClientStream.send` and ends with
        :meth:`ClientStream.close_send`; ``request``, if given, travels in the opening request.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        payload = b"" if request is None else request.SerializeToString()
        flags = Flags.REMOTE_OPEN if streaming_client else Flags.REMOTE_CLOSED
        stream_id, inbox = await self._open(
            _request(service, method, payload, timeout, metadata), flags
        )
        return ClientStream(
            self, stream_id, inbox, response_type, streaming_client, streaming_server, deadline
        )

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with :class:`ConnectionClosed`."""
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiver
        await self._shutdown(ConnectionClosed())

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- used by ClientStream --------------------------------------------------------------

    async def _send(self, stream_id: int, message_type: int, flags: int, payload: bytes) -> None:
        data = encode_frame(stream_id, message_type, flags, payload)
        async with self._write_lock:
            self._check_open()
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ConnectionClosed(f"ttrpc: closed: {exc}") from exc

    def _forget(self, stream_id: int) -> None:
        self._inboxes.pop(stream_id, None)

    # --- internals ---------------------------------------------------------------------------

    async def _open(self, request: request_pb2.Request, flags: int) -> tuple[int, _Inbox]:
        """Allocate a stream id and send the request frame, both under the write lock."""
        data = request.SerializeToString()
        async with self._write_lock:
            self._check_open()
            stream_id = self._next_stream_id
            if stream_id > _MAX_STREAM_ID:
                raise ResourceExhausted("ttrpc: stream ids exhausted on this connection")
            frame = encode_frame(stream_id, MessageType.REQUEST, flags, data)
            self._next_stream_id += 2
            inbox = _Inbox()
            self._inboxes[stream_id] = inbox
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self._inboxes.pop(stream_id, None)
                raise ConnectionClosed(f"ttrpc: closed: {exc}") from exc
        return stream_id, inbox

    def _check_open(self) -> None:
        if self._closed:
            raise self._close_error or ConnectionClosed()

    async def _receive_loop(self) -> None:
        reason = ConnectionClosed()
        try:
            while True:
                frame = await read_frame(self._reader)
                if frame is None:
                    break
                self._route(frame)
        except FramingError as exc:
            log.warning("ttrpc: dropping connection: %s", exc)
            reason = ConnectionClosed(f"ttrpc: closed: {exc}")
        except (ConnectionError, OSError) as exc:
            reason = ConnectionClosed(f"ttrpc: closed: {exc}")
        finally:
            await self._shutdown(reason)

    def _route(self, frame: Frame | OversizedFrame) -> None:
        inbox = self._inboxes.get(frame.stream_id)
        if inbox is None:
            log.debug(
                "ttrpc: received message on inactive stream",
                extra={"stream_id": frame.stream_id},
            )
            return
        if isinstance(frame, OversizedFrame):
            log.warning(
                "ttrpc: discarded oversized message (%d bytes)",
                frame.length,
                extra={"stream_id": frame.stream_id},
            )
            inbox.queue.put_nowait(frame.error())
            self._inboxes.pop(frame.stream_id, None)
        elif inbox.queue.qsize() >= STREAM_BUFFER:
            log.warning("ttrpc: stream not read, dropping it", extra={"stream_id": frame.stream_id})
            inbox.queue.put_nowait(ResourceExhausted("ttrpc: stream buffer full"))
            self._inboxes.pop(frame.stream_id, None)
        else:
            inbox.queue.put_nowait(frame)

    async def _shutdown(self, reason: ConnectionClosed) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_error = reason
        for inbox in self._inboxes.values():
            inbox.queue.put_nowait(ConnectionClosed(reason.message))
        self._inboxes.clear()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


class ClientStream(Generic[RespT]):
    """The client's end of a stream: receive responses, and send data on a streaming client.

    Iterating yields responses until the server ends the stream; an error status is raised as
    its exception. Use ``async with`` (or :meth:`aclose`) to stop listening early.
    """

    def __init__(
        self,
        client: Client,
        stream_id: int,
        inbox: _Inbox,
        response_type: type[RespT],
        streaming_client: bool,
        streaming_server: bool,
        deadline: float | None,
    ) -> None:
        self.stream_id = stream_id
        self._client = client
        self._inbox = inbox
        self._response_type = response_type
        self._streaming_client = streaming_client
        self._streaming_server = streaming_server
        self._deadline = deadline
        self._local_closed = not streaming_client
        self._remote_closed = False

    async def send(self, message: Message) -> None:
        """Send one message to the server (streaming clients only)."""
        if not self._streaming_client:
            raise ProtocolError("cannot send data from non-streaming client: protocol error")
        if self._local_closed:
            raise ProtocolError("ttrpc: stream closed")
        await self._client._send(
            self.stream_id, MessageType.DATA, Flags.NONE, message.SerializeToString()
        )

    async def close_send(self) -> None:
        """Tell the server no more messages follow (streaming clients only)."""
        if not self._streaming_client:
            raise ProtocolError("cannot close non-streaming client: protocol error")
        if self._local_closed:
            return
        self._local_closed = True
        await self._client._send(
            self.stream_id, MessageType.DATA, Flags.REMOTE_CLOSED | Flags.NO_DATA, b""
        )

    async def recv(self) -> RespT:
        """The next response; raises EOFError when the server ended the stream cleanly."""
        if self._remote_closed:
            raise EOFError("ttrpc: stream ended")
        try:
            frame = await _receive(self._inbox, self._deadline)
        except BaseException:
            self._finish()
            raise
        if frame.type == MessageType.RESPONSE:
            self._finish()
            response = decode(request_pb2.Response, frame.payload)
            if response.status.code:
                status = response.status
                raise from_status(status.code, status.message, list(status.details))
            if self._streaming_server and not response.payload:
                raise EOFError("ttrpc: stream ended")
            return decode(self._response_type, response.payload)
        if frame.type == MessageType.DATA:
            if not self._streaming_server:
                self._finish()
                raise ProtocolError("received data from non-streaming server: protocol error")
            if frame.has(Flags.REMOTE_CLOSED):
                self._finish()
                if frame.has(Flags.NO_DATA):
                    raise EOFError("ttrpc: stream ended")
            return decode(self._response_type, frame.payload)
        self._finish()
        raise ProtocolError(f"unexpected message type {frame.type} received: protocol error")

    def __aiter__(self) -> ClientStream[RespT]:
        return self

    async def __anext__(self) -> RespT:
        try:
            return await self.recv()
        except EOFError:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving; frames still arriving for this stream are dropped."""
        self._finish()

    async def __aenter__(self) -> ClientStream[RespT]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _finish(self) -> None:
        self._remote_closed = True
        self._client._forget(self.stream_id)


def _request(
    service: str, method: str, payload: bytes, timeout: float | None, metadata: MetadataArg
) -> request_pb2.Request:
    request = request_pb2.Request(service=service, method=method, payload=payload)
    if timeout is not None:
        request.timeout_nano = max(1, int(timeout * 1e9))
    md = metadata if isinstance(metadata, Metadata) else Metadata.of(metadata)
    for key, value in md.pairs():
        request.metadata.add(key=key, value=value)
    return request


async def _receive(inbox: _Inbox, deadline: float | None) -> Frame:
    """The next frame of a stream, raising what ended it or DeadlineExceeded at ``deadline``."""
    try:
        async with asyncio.timeout_at(deadline):
            item = await inbox.queue.get()
    except TimeoutError:
        raise DeadlineExceeded(DEADLINE_MESSAGE) from None
    if isinstance(item, BaseException):
        raise item
    return item
