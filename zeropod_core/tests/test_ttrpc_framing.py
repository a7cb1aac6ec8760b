"""The ttrpc frame header and reading frames from a byte stream, without a server."""

from __future__ import annotations

import asyncio

import pytest

from zeropod_core.ttrpc import ResourceExhausted
from zeropod_core.ttrpc.framing import (
    HEADER_LENGTH,
    MESSAGE_LENGTH_MAX,
    Flags,
    Frame,
    FramingError,
    MessageType,
    OversizedFrame,
    decode_header,
    encode_frame,
    read_frame,
)


def reader_with(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_header_layout_matches_containerd() -> None:
    # length 3, stream 1, type request, no flags: 00000003 00000001 01 00, then the payload
    assert (
        encode_frame(1, MessageType.REQUEST, 0, b"abc")
        == bytes.fromhex("00000003000000010100") + b"abc"
    )
    frame = encode_frame(0x01020304, MessageType.DATA, Flags.REMOTE_CLOSED | Flags.NO_DATA)
    assert frame == bytes.fromhex("00000000010203040305")
    assert decode_header(frame) == (0, 0x01020304, 3, 5)
    assert HEADER_LENGTH == 10
    assert MESSAGE_LENGTH_MAX == 4 * 1024 * 1024


def test_flag_values_match_containerd() -> None:
    assert (Flags.REMOTE_CLOSED, Flags.REMOTE_OPEN, Flags.NO_DATA) == (1, 2, 4)
    assert (MessageType.REQUEST, MessageType.RESPONSE, MessageType.DATA) == (1, 2, 3)


def test_encode_refuses_oversized_payload() -> None:
    encode_frame(1, MessageType.RESPONSE, 0, bytes(MESSAGE_LENGTH_MAX))  # the limit itself is ok
    with pytest.raises(ResourceExhausted, match="exceed maximum message size of 4194304"):
        encode_frame(1, MessageType.RESPONSE, 0, bytes(MESSAGE_LENGTH_MAX + 1))


async def test_reads_consecutive_frames_then_clean_eof() -> None:
    data = encode_frame(1, MessageType.REQUEST, 0, b"one") + encode_frame(
        3, MessageType.DATA, Flags.REMOTE_CLOSED, b""
    )
    reader = reader_with(data)
    assert await read_frame(reader) == Frame(1, MessageType.REQUEST, 0, b"one")
    second = await read_frame(reader)
    assert second == Frame(3, MessageType.DATA, Flags.REMOTE_CLOSED, b"")
    assert isinstance(second, Frame) and second.has(Flags.REMOTE_CLOSED)
    assert not second.has(Flags.NO_DATA)
    assert await read_frame(reader) is None


async def test_unknown_type_and_flags_are_passed_through() -> None:
    reader = reader_with(encode_frame(1, 0x7F, 0xF0, b"x"))
    assert await read_frame(reader) == Frame(1, 0x7F, 0xF0, b"x")


async def test_truncated_header_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="frame header"):
        await read_frame(reader_with(b"\x00\x00\x00"))


async def test_truncated_payload_is_a_framing_error() -> None:
    data = encode_frame(1, MessageType.REQUEST, 0, b"0123456789")[:-4]
    with pytest.raises(FramingError, match="6 of 10 bytes"):
        await read_frame(reader_with(data))


async def test_oversized_frame_is_discarded_and_reading_continues() -> None:
    length = MESSAGE_LENGTH_MAX + 10
    header = length.to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes([1, 0])
    after = encode_frame(7, MessageType.REQUEST, 0, b"next")
    reader = reader_with(header + bytes(length) + after)
    oversized = await read_frame(reader)
    assert oversized == OversizedFrame(5, MessageType.REQUEST, 0, length)
    assert isinstance(oversized, OversizedFrame)
    assert oversized.error().message == (
        f"message length {length} exceed maximum message size of {MESSAGE_LENGTH_MAX}"
    )
    assert await read_frame(reader) == Frame(7, MessageType.REQUEST, 0, b"next")


async def test_oversized_frame_cut_short_is_a_framing_error() -> None:
    header = (MESSAGE_LENGTH_MAX + 1).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([1, 0])
    with pytest.raises(FramingError, match="oversized"):
        await read_frame(reader_with(header + bytes(100)))
