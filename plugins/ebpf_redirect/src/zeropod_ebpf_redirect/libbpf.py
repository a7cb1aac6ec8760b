"""Load the compiled redirector object through ``libbpf.so.1`` over ctypes (loader only).

libbpf does the ELF parsing, relocation, BTF and map creation in 3-5 ms (measured), and it is
already on every node because iproute2 depends on it; bcc would compile with LLVM on every
load instead (0.7 s, 168 MB, kernel headers). Only the loader process imports this module.

Maps are declared with ``LIBBPF_PIN_BY_NAME``: opening with ``pin_root_path`` makes libbpf
reuse a compatible map already pinned there (so a reload keeps the pod's state) and pin the
ones it creates. An incompatible pinned map makes the load fail with EINVAL.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_lib: ctypes.CDLL | None = None


class LibbpfError(OSError):
    """A libbpf call failed; ``errno`` is libbpf's error code."""


class _OpenOpts(ctypes.Structure):
    # The stable head of struct bpf_object_open_opts; libbpf accepts a shorter ``sz`` from
    # callers built against older headers, so this works with libbpf 1.1 (bookworm) and 1.5.
    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p),
                ("relaxed_maps", ctypes.c_bool), ("pin_root_path", ctypes.c_char_p)]


def lib() -> ctypes.CDLL:
    """``libbpf.so.1`` with the signatures this module uses (loaded once)."""
    global _lib
    if _lib is None:
        handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, restype, argtypes in (
            ("bpf_object__open_file", vp, [cp, ctypes.POINTER(_OpenOpts)]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__find_program_by_name", vp, [vp, cp]),
            ("bpf_object__next_map", vp, [vp, vp]),
            ("bpf_program__fd", i, [vp]),
            ("bpf_program__pin", i, [vp, cp]),
            ("bpf_map__name", cp, [vp]),
            ("bpf_map__fd", i, [vp]),
            ("bpf_map__is_pinned", ctypes.c_bool, [vp]),
        ):
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = handle
    return _lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise LibbpfError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


class BpfObject:
    """An opened and loaded ``.o``: its programs' and maps' fds, valid until :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], *, pin_root: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts),
                               pin_root_path=os.fsencode(pin_root))
        obj = lib().bpf_object__open_file(os.fsencode(self.path), ctypes.byref(self._opts))
        if not obj:
            err = ctypes.get_errno()
            raise LibbpfError(err, f"bpf_object__open_file {self.path}: {os.strerror(err)}")
        self._obj: int | None = obj

    def load(self) -> None:
        """Create (or reuse pinned) maps, verify and load the programs, pin new maps."""
        _check(lib().bpf_object__load(self._handle()), f"bpf_object__load {self.path}")

    def _handle(self) -> int:
        if self._obj is None:
            raise ValueError("bpf object is closed")
        return self._obj

    def _program(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._handle(), name.encode())
        if not prog:
            raise LibbpfError(2, f"program {name} not found in {self.path}")
        return int(prog)

    def program_fd(self, name: str) -> int:
        """fd of a loaded program (owned by the object: do not close it)."""
        return _check(lib().bpf_program__fd(self._program(name)), f"bpf_program__fd {name}")

    def pin_program(self, name: str, path: str | os.PathLike[str]) -> None:
        """Pin a loaded program at ``path`` (which must not exist)."""
        _check(lib().bpf_program__pin(self._program(name), os.fsencode(path)),
               f"bpf_program__pin {name} {os.fspath(path)}")

    def maps(self) -> dict[str, tuple[int, bool]]:
        """map name -> (fd, pinned) for every map of the object."""
        out: dict[str, tuple[int, bool]] = {}
        cur = lib().bpf_object__next_map(self._handle(), None)
        while cur:
            name = lib().bpf_map__name(cur)
            out[name.decode() if name else "?"] = (lib().bpf_map__fd(cur),
                                                  bool(lib().bpf_map__is_pinned(cur)))
            cur = lib().bpf_object__next_map(self._handle(), cur)
        return out

    def close(self) -> None:
        """Free libbpf's object; loaded programs stay alive while attached or pinned."""
        if self._obj is not None:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
