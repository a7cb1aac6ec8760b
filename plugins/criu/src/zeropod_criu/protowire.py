"""Just enough of protobuf's wire format to read and patch CRIU's small images.

CRIU images are a header of two ``u32`` magics, then entries, each a ``u32`` size and one
protobuf message. The plugin reads the stats images and rewrites the flags of pagemap entries;
importing ``pycriu.images`` for that would add about 2.5 MiB to every shim.
"""

from __future__ import annotations

from collections.abc import Iterator

HEADER = 8  # two u32 magics: the image class and the image's own


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(number, value)`` of a message's top-level fields in order (varints and
    length-delimited only: what CRIU's images use)."""
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = read_varint(data, pos)
            yield number, data[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire}")


def encode(message: list[tuple[int, int | bytes]]) -> bytes:
    """The inverse of :func:`fields`."""
    out = bytearray()
    for number, value in message:
        if isinstance(value, bytes):
            out += encode_varint(number << 3 | 2) + encode_varint(len(value)) + value
        else:
            out += encode_varint(number << 3) + encode_varint(value)
    return bytes(out)


def entries(image: bytes) -> Iterator[bytes]:
    """The messages of a CRIU image, after its header."""
    pos = HEADER
    while pos + 4 <= len(image):
        size = int.from_bytes(image[pos:pos + 4], "little")
        yield image[pos + 4:pos + 4 + size]
        pos += 4 + size


def image(header: bytes, messages: list[bytes]) -> bytes:
    """A CRIU image from its header and messages."""
    return header[:HEADER] + b"".join(len(m).to_bytes(4, "little") + m for m in messages)
