"""Decoding payloads into messages, with the errors Go's ttrpc reports for bad ones."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

from zeropod_core.ttrpc.errors import Internal

M = TypeVar("M", bound=Message)


def decode(message_type: type[M], payload: bytes) -> M:
    """``payload`` parsed as ``message_type``.

    Raises :class:`Internal` with Go's wording (``protoUnmarshal`` in services.go) when the bytes
    are not a valid message, so a garbage payload becomes a status, never a crash.
    """
    message = message_type()
    try:
        message.ParseFromString(payload)
    except Exception as exc:  # DecodeError, or RuntimeError from some backends
        raise Internal(f"ttrpc: error unmarshalling payload: {exc}") from exc
    return message


def encode(message: Message, expected: type[Message]) -> bytes:
    """``message`` serialised, after checking it has the type the method declares.

    A handler returning the wrong type is a bug in the handler; the caller gets Internal (Go:
    "error unsupported response type") rather than bytes it would misparse.
    """
    if not isinstance(message, expected):
        raise Internal(
            f"ttrpc: error unsupported response type: {type(message).__name__}, "
            f"want {expected.DESCRIPTOR.full_name}"
        )
    return message.SerializeToString()
