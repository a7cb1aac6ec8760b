"""Packing messages into ``google.protobuf.Any`` the way containerd names their types.

containerd's ``typeurl`` package names a protobuf type by its bare full name
(``containerd.events.TaskExit``, ``containerd.runc.v1.Options``,
``io.containerd.cgroups.v1.Metrics``), without the ``type.googleapis.com/`` prefix that
``Any.Pack`` adds. containerd looks types up by that exact string, so events, options and stats
must be packed with it, and received ones must be recognised in either form.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def type_url(message_type: type[Message] | Message) -> str:
    """containerd's type URL for a message class or instance: its full protobuf name."""
    return str(message_type.DESCRIPTOR.full_name)


def pack(message: Message) -> any_pb2.Any:
    """``message`` in an Any with containerd's type URL."""
    return any_pb2.Any(type_url=type_url(message), value=message.SerializeToString())


def is_type(packed: any_pb2.Any, message_type: type[Message]) -> bool:
    """Whether ``packed`` holds a ``message_type``, with or without a URL prefix."""
    name = packed.type_url.rsplit("/", 1)[-1]
    return name == type_url(message_type)


def unpack(packed: any_pb2.Any, message_type: type[M]) -> M:
    """The message inside ``packed``; ValueError if it holds another type."""
    if not is_type(packed, message_type):
        raise ValueError(f"Any holds {packed.type_url!r}, not {type_url(message_type)!r}")
    message = message_type()
    message.ParseFromString(packed.value)
    return message
