# mypy: disable-error-code="type-arg"
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGULAR: _ClassVar[EntryKind]
    DIRECTORY: _ClassVar[EntryKind]
    SYMLINK: _ClassVar[EntryKind]
REGULAR: EntryKind
DIRECTORY: EntryKind
SYMLINK: EntryKind

class PullImageRequest(_message.Message):
    __slots__ = ("image_id", "compression")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    compression: str
    def __init__(self, image_id: _Optional[str] = ..., compression: _Optional[str] = ...) -> None: ...

class ImageChunk(_message.Message):
    __slots__ = ("file", "data", "file_end", "image_end")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILE_END_FIELD_NUMBER: _ClassVar[int]
    IMAGE_END_FIELD_NUMBER: _ClassVar[int]
    file: FileHeader
    data: bytes
    file_end: FileEnd
    image_end: ImageEnd
    def __init__(self, file: _Optional[_Union[FileHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., file_end: _Optional[_Union[FileEnd, _Mapping]] = ..., image_end: _Optional[_Union[ImageEnd, _Mapping]] = ...) -> None: ...

class FileHeader(_message.Message):
    __slots__ = ("path", "kind", "mode", "uid", "gid", "size", "link_target", "compression")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int
    link_target: str
    compression: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., size: _Optional[int] = ..., link_target: _Optional[str] = ..., compression: _Optional[str] = ...) -> None: ...

class FileEnd(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    def __init__(self, sha256: _Optional[bytes] = ...) -> None: ...

class ImageEnd(_message.Message):
    __slots__ = ("sha256", "files", "bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    files: int
    bytes: int
    def __init__(self, sha256: _Optional[bytes] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
