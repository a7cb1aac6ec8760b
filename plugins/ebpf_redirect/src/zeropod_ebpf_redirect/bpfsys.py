"""A minimal ``bpf(2)`` wrapper over ctypes: open pinned objects and read/write map entries.

This is all the long-lived shim needs to drive the redirector, so it imports only the
standard library: there is one shim per pod, and libbpf, pyroute2 or bcc in each of them
would multiply their memory by the pod count. Loading programs is the loader's job
(:mod:`zeropod_ebpf_redirect.loader`, a short-lived helper process).

Keys and values are typed through small codecs (:class:`IntCodec`, :class:`StructCodec`) so
that no caller packs bytes by hand: a wrong byte order in a map key silently disables the
redirect (seen during the measurements), a typed API makes that mistake impossible.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

# bpf(2) syscall numbers per architecture (asm/unistd.h).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280, "s390x": 351,
            "ppc64le": 361, "ppc64": 361}

# enum bpf_cmd
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15

# update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# BPF_OBJ_GET file flags
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4

# enum bpf_map_type values that need special value handling
_PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH,
#                                                PERCPU_CGROUP_STORAGE

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    """The leading part of ``struct bpf_map_info`` (the kernel copies what fits)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


class ProgInfo(ctypes.Structure):
    """The leading part of ``struct bpf_prog_info``: enough to name and identify a program."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", ctypes.c_uint32),
                ("xlated_prog_len", ctypes.c_uint32), ("jited_prog_insns", ctypes.c_uint64),
                ("xlated_prog_insns", ctypes.c_uint64), ("load_time", ctypes.c_uint64),
                ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16)]


def _sys_bpf_nr() -> int:
    machine = os.uname().machine
    try:
        return _SYS_BPF[machine]
    except KeyError:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown for {machine}") from None


_NR_BPF = _sys_bpf_nr()


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call ``bpf(cmd, &attr, sizeof(attr))``; raise :class:`OSError` (errno subclass) on error."""
    ret = int(_libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), ctypes.byref(attr),
                            ctypes.c_uint(ctypes.sizeof(attr))))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def obj_get(path: str | os.PathLike[str], *, flags: int = 0) -> int:
    """Open a pinned map or program (``BPF_OBJ_GET``) and return its fd (close it yourself)."""
    raw = os.fsencode(path)
    buf = ctypes.create_string_buffer(raw)
    attr = _ObjAttr(pathname=ctypes.addressof(buf), bpf_fd=0, file_flags=flags)
    try:
        return bpf(BPF_OBJ_GET, attr)
    except OSError as exc:
        raise type(exc)(exc.errno, f"BPF_OBJ_GET {os.fsdecode(raw)}: {exc.strerror}") from None


def _obj_info(fd: int, info: ctypes.Structure) -> None:
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)


def map_info(fd: int) -> MapInfo:
    """Type, id, key/value sizes and name of the map behind ``fd``."""
    info = MapInfo()
    _obj_info(fd, info)
    return info


def prog_info(fd: int) -> ProgInfo:
    """Type, id, tag and name of the program behind ``fd``."""
    info = ProgInfo()
    _obj_info(fd, info)
    return info


def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU maps hold one value slot for each of them."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += (int(last) if last else int(first)) - int(first) + 1
    return count


class Codec(Protocol[T]):
    """Turns a Python value into the fixed-size bytes of a map key or value, and back."""

    @property
    def size(self) -> int: ...

    def pack(self, value: T) -> bytes: ...

    def unpack(self, data: bytes) -> T: ...


class IntCodec:
    """A single integer in native byte order (``"=H"`` for ``__u16``, ``"=Q"`` for ``__u64``)."""

    def __init__(self, fmt: str) -> None:
        self._struct = struct.Struct(fmt)

    @property
    def size(self) -> int:
        return self._struct.size

    def pack(self, value: int) -> bytes:
        return self._struct.pack(value)

    def unpack(self, data: bytes) -> int:
        return int(self._struct.unpack(data)[0])


class StructCodec(Generic[T]):
    """A C struct laid out by a :mod:`struct` format, converted to and from a Python type."""

    def __init__(self, fmt: str, to_fields: Callable[[T], tuple[Any, ...]],
                 from_fields: Callable[..., T]) -> None:
        self._struct = struct.Struct(fmt)
        self._to_fields = to_fields
        self._from_fields = from_fields

    @property
    def size(self) -> int:
        return self._struct.size

    def pack(self, value: T) -> bytes:
        return self._struct.pack(*self._to_fields(value))

    def unpack(self, data: bytes) -> T:
        return self._from_fields(*self._struct.unpack(data))


U8 = IntCodec("=B")
U16 = IntCodec("=H")
U32 = IntCodec("=I")
U64 = IntCodec("=Q")


class MapLayoutError(Exception):
    """A pinned map does not have the key/value sizes this code expects (version mismatch)."""


class Map(Generic[K, V]):
    """One open BPF map with typed keys and values.

    Use :meth:`open` for a pinned map. Errors are :class:`OSError` subclasses with the kernel's
    errno (``FileNotFoundError`` for a missing key, ``FileExistsError`` for ``BPF_NOEXIST``...).
    """

    def __init__(self, fd: int, key: Codec[K], value: Codec[V], *, name: str = "") -> None:
        self._fd = fd
        self._key = key
        self._value = value
        self.name = name
        self._value_size = value.size

    @classmethod
    def open(cls, path: str | os.PathLike[str], key: Codec[K], value: Codec[V], *,
             flags: int = 0) -> Map[K, V]:
        """Open the map pinned at ``path`` and check that its layout matches the codecs."""
        fd = obj_get(path, flags=flags)
        try:
            info = map_info(fd)
            if info.type in _PERCPU_MAP_TYPES:
                raise MapLayoutError(f"{path}: per-CPU map, use PerCpuMap")
            if (info.key_size, info.value_size) != (key.size, value.size):
                raise MapLayoutError(
                    f"{path}: key/value sizes {info.key_size}/{info.value_size}, expected "
                    f"{key.size}/{value.size} (pinned by another version of the program?)")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, key, value, name=os.path.basename(os.fspath(path)))

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Map[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attr(self, key: ctypes.Array[ctypes.c_char] | None,
              value: ctypes.Array[ctypes.c_char] | None, flags: int = 0) -> _MapElemAttr:
        if self._fd < 0:
            raise ValueError(f"map {self.name} is closed")
        return _MapElemAttr(map_fd=self._fd, key=0 if key is None else ctypes.addressof(key),
                            value=0 if value is None else ctypes.addressof(value), flags=flags)

    def _key_buf(self, key: K) -> ctypes.Array[ctypes.c_char]:
        raw = self._key.pack(key)
        return ctypes.create_string_buffer(raw, len(raw))

    def lookup_raw(self, key: K) -> bytes | None:
        """The value's bytes, or None when ``key`` is absent."""
        # The buffers must stay referenced until the syscall returns: the attr holds raw
        # addresses only, so no temporaries here.
        key_buf = self._key_buf(key)
        out = ctypes.create_string_buffer(self._value_size)
        try:
            bpf(BPF_MAP_LOOKUP_ELEM, self._attr(key_buf, out))
        except FileNotFoundError:
            return None
        return out.raw

    def lookup(self, key: K) -> V | None:
        """The value stored for ``key``, or None when absent."""
        raw = self.lookup_raw(key)
        return None if raw is None else self._value.unpack(raw)

    def update(self, key: K, value: V, flags: int = BPF_ANY) -> None:
        """Store ``value`` for ``key`` (``BPF_ANY``, ``BPF_NOEXIST`` or ``BPF_EXIST``)."""
        raw = self._value.pack(value)
        key_buf = self._key_buf(key)
        value_buf = ctypes.create_string_buffer(raw, len(raw))
        bpf(BPF_MAP_UPDATE_ELEM, self._attr(key_buf, value_buf, flags))

    def insert(self, key: K, value: V) -> bool:
        """Store only if absent (``BPF_NOEXIST``); False when ``key`` already existed."""
        try:
            self.update(key, value, BPF_NOEXIST)
        except FileExistsError:
            return False
        return True

    def delete(self, key: K) -> bool:
        """Remove ``key``; False when it was absent."""
        buf = self._key_buf(key)
        try:
            bpf(BPF_MAP_DELETE_ELEM, self._attr(buf, None))
        except FileNotFoundError:
            return False
        return True

    def keys(self) -> Iterator[K]:
        """Iterate over the keys (``BPF_MAP_GET_NEXT_KEY``); do not delete while iterating."""
        cur: ctypes.Array[ctypes.c_char] | None = None
        while True:
            nxt = ctypes.create_string_buffer(self._key.size)
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, self._attr(cur, nxt))
            except FileNotFoundError:
                return
            yield self._key.unpack(nxt.raw)
            cur = nxt

    def items(self) -> Iterator[tuple[K, V]]:
        """Iterate over ``(key, value)``; entries deleted meanwhile are skipped."""
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                yield key, value


class PerCpuMap(Generic[K, V]):
    """A per-CPU map: a lookup returns one value per possible CPU (each slot 8-byte aligned)."""

    def __init__(self, fd: int, key: Codec[K], value: Codec[V], *, name: str = "") -> None:
        self._map: Map[K, bytes] = Map(fd, key, _RawCodec(0), name=name)
        self._value = value
        self._slot = (value.size + 7) // 8 * 8
        self._cpus = possible_cpus()
        self._map._value_size = self._slot * self._cpus
        self.name = name

    @classmethod
    def open(cls, path: str | os.PathLike[str], key: Codec[K], value: Codec[V]) -> PerCpuMap[K, V]:
        """Open the per-CPU map pinned at ``path`` and check its layout."""
        fd = obj_get(path)
        try:
            info = map_info(fd)
            if info.type not in _PERCPU_MAP_TYPES or (info.key_size, info.value_size) != (
                    key.size, value.size):
                raise MapLayoutError(f"{path}: not a per-CPU map with key/value sizes "
                                     f"{key.size}/{value.size}")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, key, value, name=os.path.basename(os.fspath(path)))

    def lookup(self, key: K) -> list[V] | None:
        """One value per possible CPU, or None when ``key`` is absent."""
        raw = self._map.lookup_raw(key)
        if raw is None:
            return None
        size = self._value.size
        return [self._value.unpack(raw[i * self._slot:i * self._slot + size])
                for i in range(self._cpus)]

    def close(self) -> None:
        self._map.close()


class _RawCodec:
    """Bytes passed through unchanged (used internally for per-CPU values)."""

    def __init__(self, size: int) -> None:
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def pack(self, value: bytes) -> bytes:
        return value

    def unpack(self, data: bytes) -> bytes:
        return data
