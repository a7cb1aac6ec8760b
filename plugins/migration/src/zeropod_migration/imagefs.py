"""An image folder as a stream of chunks, and back: the wire format of the image service.

Sender: walks the folder (sorted, so both ends agree on the order), one ``FileHeader`` per
entry; a regular file's content follows in ``data`` chunks of :data:`CHUNK_SIZE` bytes and a
``FileEnd`` with its sha256; an ``ImageEnd`` closes the stream with the whole-image checksum.
Unix sockets and other special files are skipped (upstream does the same: a CRIU lazy-pages
socket is no image content). Compression is decided per file: ``auto`` compresses the
first chunk with zstd and keeps compressing only when that saved at least
:data:`WORTHWHILE` of it (CRIU page images of random data do not compress; zeroed or text
pages do). Each compressed chunk is one zstd frame, so the receiver decodes chunk by chunk.

Receiver: writes into a fresh, private folder next to the destination and renames it into
place only after every file's and the image's checksum matched, so a broken stream or a bad
checksum leaves nothing behind (:meth:`ImageReceiver.abort`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import zstandard

from ._pb import transfer_pb2 as pb

CHUNK_SIZE = 1 << 20
ZSTD_LEVEL = 1
WORTHWHILE = 0.10  # compress a file when its first chunk shrank by at least this fraction
COMPRESSION_MODES = ("auto", "zstd", "none")


class TransferError(RuntimeError):
    """The image could not be moved; the message says which file and why."""


class ChecksumMismatch(TransferError):
    """A file or the whole image arrived different from what the sender hashed."""


def _image_record(path: str, size: int, digest: bytes) -> bytes:
    return f"{path}\0{size}\0{digest.hex()}\n".encode()


@dataclass
class SendStats:
    """What one image send moved."""

    files: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    compressed_files: int = 0



def _unreadable(error: OSError) -> None:
    """A folder that cannot be listed fails the transfer: an image without it would lose
    the app's files without a word."""
    raise TransferError(f"cannot read {error.filename}: {error.strerror}") from error


def _entries(root: Path, prefix: str = "") -> Iterator[tuple[str, Path, os.stat_result]]:
    """(path in the image, path on disk, lstat) of everything below ``root``, parents
    before children; ``prefix`` puts them below a folder of the image."""
    if prefix:
        yield prefix, root, root.lstat()
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            yield (f"{prefix}/{rel}" if prefix else rel), full, full.lstat()


class ImageSender:
    """Produces the chunk messages of one image folder (blocking: run it in a thread)."""

    def __init__(self, root: Path, *, compression: str = "auto",
                 chunk_size: int = CHUNK_SIZE, extras: Mapping[str, Path] | None = None) -> None:
        """:param extras: more folders to send, each below the image folder named by its key
            (the container's overlay upper dir as ``upper``)."""
        if compression not in COMPRESSION_MODES:
            raise ValueError(f"unknown compression {compression!r} (one of "
                             f"{', '.join(COMPRESSION_MODES)})")
        if not root.is_dir():
            raise FileNotFoundError(f"no image folder {root}")
        self.root, self.compression, self.chunk_size = root, compression, chunk_size
        self.extras = dict(extras or {})
        for name in self.extras:
            safe_relative(name)
            if (root / name).exists():
                raise ValueError(f"{root / name} exists: cannot send another folder as {name}")
        self.stats = SendStats()
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def chunks(self) -> Iterator[Any]:
        image_hash = hashlib.sha256()
        entries = itertools.chain(_entries(self.root), *(
            _entries(folder, name) for name, folder in sorted(self.extras.items())))
        for rel, full, st in entries:
            header = pb.FileHeader(path=rel, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                                   gid=st.st_gid)
            if stat.S_ISDIR(st.st_mode):
                header.kind = pb.DIRECTORY
                yield pb.ImageChunk(file=header)
            elif stat.S_ISLNK(st.st_mode):
                header.kind = pb.SYMLINK
                header.link_target = os.readlink(full)
                yield pb.ImageChunk(file=header)
            elif stat.S_ISREG(st.st_mode):
                yield from self._file(rel, full, header, image_hash)
        yield pb.ImageChunk(image_end=pb.ImageEnd(
            sha256=image_hash.digest(), files=self.stats.files, bytes=self.stats.raw_bytes))

    def _file(self, rel: str, full: Path, header: Any, image_hash: Any) -> Iterator[Any]:
        digest = hashlib.sha256()
        size = 0
        with open(full, "rb") as source:
            first = source.read(self.chunk_size)
            encoded_first = first
            compress = False
            if first and self.compression != "none":
                encoded_first = self._compressor.compress(first)
                compress = (self.compression == "zstd"
                            or len(encoded_first) <= len(first) * (1 - WORTHWHILE))
            header.kind = pb.REGULAR
            header.size = os.fstat(source.fileno()).st_size
            header.compression = "zstd" if compress else ""
            yield pb.ImageChunk(file=header)
            block = first
            while block:
                digest.update(block)
                size += len(block)
                if block is first:
                    wire = encoded_first if compress else first
                else:
                    wire = self._compressor.compress(block) if compress else block
                self.stats.wire_bytes += len(wire)
                yield pb.ImageChunk(data=wire)
                block = source.read(self.chunk_size)
        self.stats.files += 1
        self.stats.raw_bytes += size
        self.stats.compressed_files += compress
        image_hash.update(_image_record(rel, size, digest.digest()))
        yield pb.ImageChunk(file_end=pb.FileEnd(sha256=digest.digest()))


def safe_relative(path: str) -> PurePosixPath:
    """A sender's path, refused when it could land outside the destination."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise TransferError(f"refusing unsafe path in the image stream: {path!r}")
    return rel


@dataclass
class ImageReceiver:
    """Writes an incoming image stream below ``dest`` (blocking: feed it from a thread).

    Nothing appears at ``dest`` until :meth:`finish` verified the image; :meth:`abort` removes
    everything written so far. ``dest`` must not exist yet.
    """

    dest: Path
    staging: Path = field(init=False)
    files: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    _header: Any = None
    _out: Any = None
    _digest: Any = None
    _size: int = 0
    _image_hash: Any = field(default_factory=hashlib.sha256)
    _decompressor: Any = field(default_factory=zstandard.ZstdDecompressor)
    _done: bool = False
    _dir_modes: list[tuple[Path, int]] = field(default_factory=list)
    _made: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dest.exists():
            raise TransferError(f"destination {self.dest} exists already")
        # the folders made for the image go again on failure (nothing is left behind)
        self._made = [p for p in (self.dest.parent, *self.dest.parent.parents)
                      if not p.exists()]
        self.dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.staging = self.dest.with_name(f".{self.dest.name}.partial-{secrets.token_hex(4)}")
        self.staging.mkdir(mode=0o700)

    def feed(self, chunk: Any) -> None:
        kind = chunk.WhichOneof("kind")
        if kind == "file":
            self._start(chunk.file)
        elif kind == "data":
            self._data(chunk.data)
        elif kind == "file_end":
            self._end_file(chunk.file_end.sha256)
        elif kind == "image_end":
            self._end_image(chunk.image_end)
        else:
            raise TransferError(f"unexpected message in the image stream: {kind}")

    def _start(self, header: Any) -> None:
        if self._out is not None:
            raise TransferError(f"{self._header.path}: no end before the next file")
        if self._done:
            raise TransferError("data after the end of the image")
        target = self.staging / safe_relative(header.path)
        if not target.parent.is_dir():
            raise TransferError(f"{header.path}: its folder was not sent before it")
        if header.kind == pb.DIRECTORY:
            target.mkdir(mode=0o700)
            os.chown(target, header.uid, header.gid)
            self._dir_modes.append((target, header.mode))  # applied at the end: 0500 folders
        elif header.kind == pb.SYMLINK:
            os.symlink(header.link_target, target)
            os.lchown(target, header.uid, header.gid)
        elif header.kind == pb.REGULAR:
            if header.compression not in ("", "zstd"):
                raise TransferError(f"{header.path}: unknown compression {header.compression!r}")
            self._header, self._digest, self._size = header, hashlib.sha256(), 0
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._out = os.fdopen(fd, "wb")
        else:
            raise TransferError(f"{header.path}: unknown entry kind {header.kind}")

    def _own(self, target: Path, header: Any) -> None:
        os.chown(target, header.uid, header.gid)
        os.chmod(target, header.mode)

    def _data(self, wire: bytes) -> None:
        if self._out is None:
            raise TransferError("file data outside a file")
        self.wire_bytes += len(wire)
        if self._header.compression == "zstd":
            try:
                block = self._decompressor.decompress(wire)
            except zstandard.ZstdError as exc:
                raise TransferError(f"{self._header.path}: corrupt zstd frame: {exc}") from exc
        else:
            block = wire
        self._size += len(block)
        if self._size > self._header.size:
            raise TransferError(f"{self._header.path}: more data than its size "
                                f"{self._header.size}")
        self._digest.update(block)
        self._out.write(block)

    def _end_file(self, expected: bytes) -> None:
        if self._out is None:
            raise TransferError("file end outside a file")
        header = self._header
        self._out.close()
        self._out = None
        if self._size != header.size:
            raise TransferError(f"{header.path}: got {self._size} bytes, expected {header.size}")
        digest = self._digest.digest()
        if digest != expected:
            raise ChecksumMismatch(f"{header.path}: sha256 {digest.hex()} does not match the "
                                   f"sender's {expected.hex()}")
        self._own(self.staging / header.path, header)
        self._image_hash.update(_image_record(header.path, self._size, digest))
        self.files += 1
        self.raw_bytes += self._size

    def _end_image(self, end: Any) -> None:
        if self._out is not None:
            raise TransferError(f"{self._header.path}: the image ended inside it")
        if end.files != self.files or end.bytes != self.raw_bytes:
            raise TransferError(f"the image has {end.files} files / {end.bytes} bytes, "
                                f"received {self.files} / {self.raw_bytes}")
        if self._image_hash.digest() != end.sha256:
            raise ChecksumMismatch("the image checksum does not match the sender's")
        self._done = True

    def finish(self) -> None:
        """Move the verified image into place; without a complete image this aborts."""
        if not self._done:
            self.abort()
            raise TransferError("the image stream ended before the image did")
        for folder, mode in reversed(self._dir_modes):
            os.chmod(folder, mode)
        self.staging.replace(self.dest)

    def abort(self) -> None:
        """Remove everything received so far."""
        if self._out is not None:
            self._out.close()
            self._out = None
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in self._made:  # innermost first; only while still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
