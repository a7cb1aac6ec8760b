"""ttrpc framing: the 10-byte frame header, and reading one frame off a stream safely.

Every ttrpc message is one frame (containerd/ttrpc channel.go): a big-endian header of payload
length (u32), stream id (u32, odd when the client opened the stream), message type (u8) and
flags (u8), followed by the payload. The server and the client both read and write through this
module so that both enforce the same size limit and treat a broken stream the same way:

* a frame longer than :data:`MESSAGE_LENGTH_MAX` is read and thrown away, and reported as an
  :class:`OversizedFrame` so the caller can answer that stream with ResourceExhausted and keep
  the connection (what Go's ``channel.recv`` does);
* a connection that ends inside a header or a payload raises :class:`FramingError`: the byte
  stream cannot be resynchronised, so the only safe thing is to drop the connection.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

from zeropod_core.ttrpc.errors import ResourceExhausted

HEADER_LENGTH: Final = 10
MESSAGE_LENGTH_MAX: Final = 4 << 20  # containerd's messageLengthMax
_HEADER: Final = struct.Struct(">IIBB")
_DISCARD_CHUNK: Final = 64 << 10


class MessageType(IntEnum):
    """Frame types; others may appear in future versions and are ignored by receivers."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flags(IntFlag):
    """Frame flags, named from the receiver's point of view as in ttrpc's PROTOCOL.md."""

    NONE = 0
    REMOTE_CLOSED = 0x1  # the sender sends no more data on this stream
    REMOTE_OPEN = 0x2  # request: the sender will stream data after it
    NO_DATA = 0x4  # data frame carries no message (a bare close)


@dataclass(frozen=True, slots=True)
class Frame:
    """One received frame. ``type`` and ``flags`` stay plain ints: unknown values are legal."""

    stream_id: int
    type: int
    flags: int
    payload: bytes = b""

    def has(self, flag: Flags) -> bool:
        return self.flags & flag == flag


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose declared length was over the limit; its payload has been discarded."""

    stream_id: int
    type: int
    flags: int
    length: int

    def error(self) -> ResourceExhausted:
        return message_too_large(self.length)


class FramingError(Exception):
    """The stream ended or broke inside a frame; the connection cannot be used any more."""


def message_too_large(length: int) -> ResourceExhausted:
    """The error Go's ttrpc reports for a message over the limit (same wording)."""
    return ResourceExhausted(
        f"message length {length} exceed maximum message size of {MESSAGE_LENGTH_MAX}"
    )


def encode_frame(stream_id: int, message_type: int, flags: int, payload: bytes = b"") -> bytes:
    """Header and payload as one bytes object, so a single write puts a whole frame on the wire.

    Raises :class:`ResourceExhausted` for a payload over the limit, before anything is written.
    """
    if len(payload) > MESSAGE_LENGTH_MAX:
        raise message_too_large(len(payload))
    return _HEADER.pack(len(payload), stream_id, message_type, flags) + payload


def decode_header(header: bytes) -> tuple[int, int, int, int]:
    """(length, stream id, type, flags) of a 10-byte header."""
    length, stream_id, message_type, flags = _HEADER.unpack(header)
    return length, stream_id, message_type, flags


async def read_frame(reader: asyncio.StreamReader) -> Frame | OversizedFrame | None:
    """The next frame, or None when the peer closed the connection between two frames.

    Raises :class:`FramingError` when the connection ends inside a frame, and lets OSError
    (e.g. a reset connection) through.
    """
    try:
        header = await reader.readexactly(HEADER_LENGTH)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FramingError(
            f"connection closed inside a frame header ({len(exc.partial)} of {HEADER_LENGTH} bytes)"
        ) from None
    length, stream_id, message_type, flags = decode_header(header)
    if length > MESSAGE_LENGTH_MAX:
        await _discard(reader, length)
        return OversizedFrame(stream_id, message_type, flags, length)
    payload = b""
    if length:
        try:
            payload = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise FramingError(
                f"connection closed inside a frame payload ({len(exc.partial)} of {length} bytes)"
            ) from None
    return Frame(stream_id, message_type, flags, payload)


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
    """Skip ``length`` bytes in bounded chunks, never holding an oversized payload in memory."""
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, _DISCARD_CHUNK))
        if not chunk:
            raise FramingError(
                f"connection closed while discarding an oversized message "
                f"(length {length} exceeds maximum message size {MESSAGE_LENGTH_MAX})"
            )
        remaining -= len(chunk)
