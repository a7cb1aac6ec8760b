"""One server-side ttrpc connection: read frames, run each call in its own task, write replies.

This follows ``serverConn.run`` in containerd/ttrpc server.go, including how it answers bad
input, because containerd's client expects those answers:

* oversized frame: payload discarded, ResourceExhausted on that stream, connection kept;
* even stream id: InvalidArgument "StreamID must be odd for client initiated streams";
* request with a stream id not above the last one: InvalidArgument "StreamID cannot be re-used
  and must increment";
* request that is not a valid ``ttrpc.Request``: InvalidArgument "unmarshal request error: ...";
* unknown service or method: Unimplemented "service X" / "method X";
* data frame for a stream that is not open: InvalidArgument "StreamID is no longer active";
* data frame for a unary call, or after the client closed its side: ignored (logged), since
  answering would put a second response on a stream whose handler still runs;
* response frames and unknown types: ignored (logged), for compatibility with future versions;
* connection ending inside a frame: connection closed, nothing else affected.

Replies are whole frames written under one lock, so concurrent calls never interleave bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from google.protobuf.message import DecodeError

from zeropod_core.api._pb.ttrpc import request_pb2
from zeropod_core.ttrpc._codec import decode, encode
from zeropod_core.ttrpc.context import CallContext, Metadata
from zeropod_core.ttrpc.errors import (
    Code,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    to_status,
)
from zeropod_core.ttrpc.framing import (
    MESSAGE_LENGTH_MAX,
    Flags,
    Frame,
    FramingError,
    MessageType,
    OversizedFrame,
    encode_frame,
    message_too_large,
    read_frame,
)
from zeropod_core.ttrpc.server_stream import ServerStream
from zeropod_core.ttrpc.service import (
    BidiStreaming,
    ClientStreaming,
    Method,
    RawUnary,
    ServerStreaming,
    Unary,
    streaming_client,
)

log = logging.getLogger("zeropod.ttrpc.server")

_CLOSE_FLAGS: Final = Flags.REMOTE_CLOSED | Flags.NO_DATA


class _Call:
    """An in-flight call: its task, and the stream its data frames go to (streaming clients)."""

    __slots__ = ("stream", "task")

    def __init__(self, stream: ServerStream[Any, Any] | None) -> None:
        self.stream = stream
        self.task: asyncio.Task[None] | None = None


class ServerConnection:
    """Serves the calls of one client connection until it closes or the server closes it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        services: Mapping[str, Mapping[str, Method]],
        *,
        accepting: Callable[[], bool],
        name: str = "",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._services = services
        self._accepting = accepting
        self.name = name
        self._write_lock = asyncio.Lock()
        self._calls: dict[int, _Call] = {}
        self._last_stream_id = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def active(self) -> int:
        """Calls still running."""
        return len(self._calls)

    async def wait_idle(self) -> None:
        """Return once no call is running (immediately when none is)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Read and dispatch frames until the peer closes; then cancel what is left."""
        log.debug("ttrpc connection open", extra={"peer": self.name})
        try:
            while True:
                try:
                    frame = await read_frame(self._reader)
                except FramingError as exc:
                    log.warning("ttrpc: dropping connection: %s", exc, extra={"peer": self.name})
                    return
                if frame is None:
                    return
                await self._dispatch(frame)
        except (ConnectionError, OSError) as exc:
            log.debug("ttrpc connection lost: %s", exc, extra={"peer": self.name})
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel running calls and close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [call.task for call in self._calls.values() if call.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._calls.clear()
        self._idle.set()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        log.debug("ttrpc connection closed", extra={"peer": self.name})

    # --- reading ---------------------------------------------------------------------------

    async def _dispatch(self, frame: Frame | OversizedFrame) -> None:
        if isinstance(frame, OversizedFrame):
            log.warning(
                "ttrpc: discarded oversized message (%d bytes)",
                frame.length,
                extra={"peer": self.name, "stream_id": frame.stream_id},
            )
            await self._send_status(frame.stream_id, frame.error())
            return
        if frame.stream_id % 2 != 1:
            await self._send_status(
                frame.stream_id,
                InvalidArgument("StreamID must be odd for client initiated streams"),
            )
            return
        if frame.type == MessageType.REQUEST:
            await self._on_request(frame)
        elif frame.type == MessageType.DATA:
            await self._on_data(frame)
        else:
            log.warning(
                "ttrpc: ignoring frame of type %d sent to a server",
                frame.type,
                extra={"peer": self.name, "stream_id": frame.stream_id},
            )

    async def _on_request(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if stream_id <= self._last_stream_id:
            await self._send_status(
                stream_id, InvalidArgument("StreamID cannot be re-used and must increment")
            )
            return
        self._last_stream_id = stream_id
        request = request_pb2.Request()
        try:
            request.ParseFromString(frame.payload)
        except DecodeError as exc:
            log.warning(
                "ttrpc: bad request frame: %s",
                exc,
                extra={"peer": self.name, "stream_id": stream_id},
            )
            await self._send_status(stream_id, InvalidArgument(f"unmarshal request error: {exc}"))
            return
        if not self._accepting():
            await self._send_status(stream_id, Unavailable("ttrpc: server closed"))
            return
        methods = self._services.get(request.service)
        if methods is None:
            await self._send_status(stream_id, Unimplemented(f"service {request.service}"))
            return
        method = methods.get(request.method)
        if method is None:
            await self._send_status(stream_id, Unimplemented(f"method {request.method}"))
            return
        self._start_call(frame, request, method)

    def _start_call(self, frame: Frame, request: request_pb2.Request, method: Method) -> None:
        loop = asyncio.get_running_loop()
        deadline = None
        if request.timeout_nano > 0:
            deadline = loop.time() + request.timeout_nano / 1e9
        ctx = CallContext(
            service=request.service,
            method=request.method,
            stream_id=frame.stream_id,
            metadata=Metadata((kv.key, kv.value) for kv in request.metadata),
            deadline=deadline,
        )
        stream: ServerStream[Any, Any] | None = None
        if isinstance(method, ClientStreaming | BidiStreaming):
            stream = ServerStream(
                method.request_type,
                method.response_type,
                lambda payload: self._send_frame(frame.stream_id, MessageType.DATA, 0, payload),
            )
            stream.open(request.payload, frame.has(Flags.REMOTE_CLOSED))
        call = _Call(stream)
        self._calls[frame.stream_id] = call
        self._idle.clear()
        call.task = asyncio.create_task(
            self._run_call(ctx, method, request.payload, call),
            name=f"ttrpc {ctx.full_method} #{frame.stream_id}",
        )

    async def _on_data(self, frame: Frame) -> None:
        call = self._calls.get(frame.stream_id)
        if call is None:
            await self._send_status(
                frame.stream_id, InvalidArgument("StreamID is no longer active")
            )
            return
        stream = call.stream
        if stream is None or stream.remote_closed:
            # Answering would put a second response on a stream whose handler still runs.
            log.warning(
                "ttrpc: ignoring data frame on a stream that takes no more data",
                extra={"peer": self.name, "stream_id": frame.stream_id},
            )
            return
        # Go answers a remote-closed frame that still carries data with an error; taking the
        # data and then closing is kinder and no Go client sends such a frame anyway.
        if not frame.has(Flags.NO_DATA) and not await stream.feed(frame.payload):
            await self._fail_stream(frame.stream_id, call)
            return
        if frame.has(Flags.REMOTE_CLOSED) and not await stream.feed(None):
            await self._fail_stream(frame.stream_id, call)

    async def _fail_stream(self, stream_id: int, call: _Call) -> None:
        """A handler that stopped reading: end its call with ResourceExhausted."""
        log.warning(
            "ttrpc: stream buffer full, failing the stream",
            extra={"peer": self.name, "stream_id": stream_id},
        )
        if self._calls.get(stream_id) is call:
            del self._calls[stream_id]
            if not self._calls:
                self._idle.set()
        if call.task is not None:
            call.task.cancel()
        await self._send_status(stream_id, ResourceExhausted("ttrpc: stream buffer full"))

    # --- running calls -----------------------------------------------------------------------

    async def _run_call(
        self, ctx: CallContext, method: Method, payload: bytes, call: _Call
    ) -> None:
        stream_id = ctx.stream_id
        extra = {
            "peer": self.name,
            "stream_id": stream_id,
            "rpc_service": ctx.service,
            "rpc_method": ctx.method,
        }
        try:
            try:
                async with asyncio.timeout_at(ctx.deadline):
                    await self._invoke(ctx, method, payload, call)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code, message, details = to_status(exc)
                if code in (Code.UNKNOWN, Code.INTERNAL):
                    log.error("ttrpc handler failed: %s", message, exc_info=exc, extra=extra)
                else:
                    log.debug("ttrpc handler returned %s: %s", code.name, message, extra=extra)
                await self._send_response(stream_id, code, message, details)
        except (ConnectionError, OSError) as exc:
            log.debug("ttrpc: could not send the reply: %s", exc, extra=extra)
        finally:
            if self._calls.get(stream_id) is call:
                del self._calls[stream_id]
            if not self._calls:
                self._idle.set()

    async def _invoke(self, ctx: CallContext, method: Method, payload: bytes, call: _Call) -> None:
        stream_id = ctx.stream_id
        if isinstance(method, RawUnary):
            await self._send_response(stream_id, payload=await method.handler(ctx, payload))
        elif isinstance(method, Unary):
            response = await method.handler(ctx, decode(method.request_type, payload))
            await self._send_response(stream_id, payload=encode(response, method.response_type))
        elif isinstance(method, ServerStreaming):
            responses = method.handler(ctx, decode(method.request_type, payload))
            await self._stream_out(stream_id, responses, method.response_type)
            await self._send_frame(stream_id, MessageType.DATA, _CLOSE_FLAGS)
        else:
            stream = call.stream
            assert stream is not None and streaming_client(method)
            if isinstance(method, ClientStreaming):
                response = await method.handler(ctx, stream)
                await self._send_response(stream_id, payload=encode(response, method.response_type))
            else:
                await method.handler(ctx, stream)
                await self._send_frame(stream_id, MessageType.DATA, _CLOSE_FLAGS)

    async def _stream_out(
        self, stream_id: int, responses: AsyncIterator[Any], response_type: type[Any]
    ) -> None:
        try:
            async for response in responses:
                await self._send_frame(
                    stream_id, MessageType.DATA, 0, encode(response, response_type)
                )
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    # --- writing -----------------------------------------------------------------------------

    async def _send_status(self, stream_id: int, error: Exception) -> None:
        code, message, details = to_status(error)
        await self._send_response(stream_id, code, message, details)

    async def _send_response(
        self,
        stream_id: int,
        code: Code = Code.OK,
        message: str = "",
        details: tuple[Any, ...] = (),
        payload: bytes = b"",
    ) -> None:
        """End a stream with a Response frame; a result over the size limit becomes an error."""
        response = request_pb2.Response(payload=payload)
        response.status.code = code
        response.status.message = message
        response.status.details.extend(details)
        data = response.SerializeToString()
        if len(data) > MESSAGE_LENGTH_MAX:
            log.warning(
                "ttrpc: response too large (%d bytes)",
                len(data),
                extra={"peer": self.name, "stream_id": stream_id},
            )
            response = request_pb2.Response()
            too_large = message_too_large(len(data))
            response.status.code = too_large.code
            response.status.message = too_large.message
            data = response.SerializeToString()
        await self._send_frame(stream_id, MessageType.RESPONSE, 0, data)

    async def _send_frame(
        self, stream_id: int, message_type: int, flags: int, payload: bytes = b""
    ) -> None:
        data = encode_frame(stream_id, message_type, flags, payload)
        async with self._write_lock:
            if self._writer.is_closing():
                raise ConnectionResetError("ttrpc: connection closed")
            self._writer.write(data)
            await self._writer.drain()
