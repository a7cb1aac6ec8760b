"""The node-to-node image service (gRPC over mutual TLS): the server and the client.

The source node's manager serves ``ImageTransfer.PullImage``: it streams
``<image root>/<image id>/snapshot`` (CRIU's images, and ``upper/`` when the container's
files travel too) as :mod:`.imagefs` chunks. The target node's manager pulls it with
:func:`pull_image` into a folder of its own choosing, verified before it appears there.

Both ends authenticate with certificates of the cluster CA (:mod:`.tls`): the server
requires and verifies a client certificate, the client verifies the server's. grpcio offers
no setting for the minimum TLS version (grpc/grpc#37305); both ends are this code, linked
against the same BoringSSL, and negotiate TLS 1.3, which the tests check from the outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ._pb import transfer_pb2 as pb
from ._pb import transfer_pb2_grpc as pb_grpc
from .annotations import UPPER, SourceInfo
from .handover import handover_root
from .imagefs import COMPRESSION_MODES, ImageReceiver, ImageSender, TransferError
from .livegate import LiveGates
from .tls import NodeCredentials

log = logging.getLogger("zeropod.migration.service")

IMAGE_SUBDIR = "snapshot"
_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# One image is one stream; a chunk is at most CHUNK_SIZE plus a little framing.
_MESSAGE_LIMIT = 8 << 20
_OPTIONS = [("grpc.max_send_message_length", _MESSAGE_LIMIT),
            ("grpc.max_receive_message_length", _MESSAGE_LIMIT)]

# A thread hop costs ~0.5 ms on a loaded node, and CRIU's images are many small files (a
# header, data and an end message each): the server reads up to _BATCH_BYTES per hop, and the
# client writes messages up to _INLINE_BYTES on its loop. (Sending and receiving a live image
# of 11 MB, ~225 messages, without gRPC at a load of 4: 130-180 ms with a hop per message on
# both sides, 45-90 ms without any.)
_BATCH_BYTES = 1 << 20
_INLINE_BYTES = 64 << 10

# (image folder, compression, extra folders by name in the image) -> the stream's messages
ChunkSource = Callable[[Path, str, Mapping[str, Path]], Iterator[Any]]


def check_image_id(image_id: str) -> str:
    """A container id as a folder name; anything that could leave the image root is refused."""
    if not _IMAGE_ID.fullmatch(image_id) or image_id in (".", ".."):
        raise ValueError(f"invalid image id {image_id!r}")
    return image_id


def _next_batch(chunks: Iterator[Any]) -> list[Any]:
    """The stream's next messages, up to about :data:`_BATCH_BYTES` (empty at the end)."""
    batch: list[Any] = []
    size = 0
    for chunk in chunks:
        batch.append(chunk)
        size += chunk.ByteSize()
        if size >= _BATCH_BYTES:
            break
    return batch


def _send_chunks(folder: Path, compression: str, extras: Mapping[str, Path]) -> Iterator[Any]:
    return ImageSender(folder, compression=compression, extras=extras).chunks()


def _extras(image_dir: Path) -> dict[str, Path]:
    """The container's files (its overlay upper dir) when its shim said they travel."""
    source = SourceInfo.load(image_dir)
    if source is None or not source.migrate_data or not source.upper_dir:
        return {}
    upper = Path(source.upper_dir)
    if not upper.is_dir() or (image_dir / IMAGE_SUBDIR / UPPER).exists():
        return {}
    return {UPPER: upper}


class ImageTransferServicer(pb_grpc.ImageTransferServicer):
    """Serves the images handed over by the node's shims (:mod:`.handover`) and those below
    ``image_root``; ``chunks`` makes the stream (tests swap it)."""

    def __init__(self, image_root: Path, chunks: ChunkSource = _send_chunks,
                 gates: LiveGates | None = None) -> None:
        self.image_root, self._chunks = image_root, chunks
        self.roots = (handover_root(image_root), image_root)
        self.gates = gates or LiveGates()

    async def PullImage(self, request: Any,
                        context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            image_id = check_image_id(request.image_id)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        refused = await self.gates.wait(image_id)  # a live dump still being written
        if refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refused)
        folder = next((root / image_id / IMAGE_SUBDIR for root in self.roots
                       if (root / image_id / IMAGE_SUBDIR).is_dir()),
                      self.image_root / image_id / IMAGE_SUBDIR)
        compression = request.compression or "auto"
        if compression not in COMPRESSION_MODES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown compression {compression!r}")
        if not folder.is_dir():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no image {request.image_id}")
        peer = _peer_name(context)
        log.info("image pull started", extra={"image": request.image_id, "peer": peer})
        started = time.monotonic()
        chunks = self._chunks(folder, compression, _extras(folder.parent))
        count = 0
        while True:
            batch = await asyncio.to_thread(_next_batch, chunks)
            if not batch:
                break
            for chunk in batch:
                count += 1
                yield chunk
        log.info("image pull served", extra={"image": request.image_id, "peer": peer,
                                             "chunks": count,
                                             "seconds": round(time.monotonic() - started, 3)})


def _peer_name(context: Any) -> str:
    with contextlib.suppress(Exception):
        names = context.auth_context().get("x509_common_name") or []
        if names:
            return str(names[0].decode())
    return ""


def server_credentials(creds: NodeCredentials) -> grpc.ServerCredentials:
    """Mutual TLS: the node's pair, and a client certificate of the cluster CA required."""
    return grpc.ssl_server_credentials([(creds.key_pem, creds.cert_pem)],
                                       root_certificates=creds.ca_pem,
                                       require_client_auth=True)


def channel_credentials(creds: NodeCredentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=creds.ca_pem,
                                        private_key=creds.key_pem,
                                        certificate_chain=creds.cert_pem)


class ImageServer:
    """The gRPC server of one node (start, stop); the manager runs it for its lifetime."""

    def __init__(self, image_root: Path, creds: NodeCredentials, listen: str,
                 chunks: ChunkSource = _send_chunks) -> None:
        self.image_root, self.creds, self.listen = image_root, creds, listen
        self._servicer = ImageTransferServicer(image_root, chunks)
        self.gates = self._servicer.gates  # live dumps in progress (the controller's)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Listen; returns the port (``listen`` may ask for port 0)."""
        server = grpc.aio.server(options=_OPTIONS)
        pb_grpc.add_ImageTransferServicer_to_server(  # type: ignore[no-untyped-call]
            self._servicer, server)
        self.port = server.add_secure_port(self.listen, server_credentials(self.creds))
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        await server.start()
        self._server = server
        log.info("image service listening", extra={"listen": self.listen, "port": self.port,
                                                   "node": self.creds.node_name})
        return self.port

    async def stop(self, grace_s: float | None = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    async def serve(self) -> None:
        """Run until cancelled (what :class:`~zeropod_core.providers.MigrationService` asks)."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())


@dataclass(frozen=True)
class PullResult:
    """What one pull moved and how long it took."""

    files: int
    raw_bytes: int
    wire_bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def open_channel(address: str, creds: NodeCredentials, server_name: str = "") -> grpc.aio.Channel:
    """A mutual-TLS channel to the image service at ``address`` (use as ``async with``)."""
    options: list[tuple[str, int | str]] = list(_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, channel_credentials(creds), options=options)


async def pull_image(address: str, creds: NodeCredentials, image_id: str, dest: Path, *,
                     compression: str = "auto", server_name: str = "",
                     on_chunk: Callable[[int], None] | None = None,
                     timeout_s: float | None = None,
                     channel: grpc.aio.Channel | None = None) -> PullResult:
    """Pull ``image_id`` from the node at ``address`` (``host:port``) into ``dest``.

    ``dest`` appears only when the whole image arrived and every checksum matched; on any
    failure (refused handshake, a stream broken midway, a checksum mismatch, cancellation)
    nothing is left and :class:`~.imagefs.TransferError` is raised with the reason.

    :param server_name: the name to check the server's certificate against, when it is not
        the host part of ``address``.
    :param on_chunk: called with the number of chunks received so far (progress, tests).
    :param channel: an open channel to ``address`` (:func:`open_channel`), so the TLS
        handshake is already done (live migration opens it before the dump); not closed.
    """
    check_image_id(image_id)
    receiver = await asyncio.to_thread(ImageReceiver, dest)
    started = time.monotonic()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if channel is None:
                channel = await stack.enter_async_context(open_channel(address, creds,
                                                                       server_name))
            stub = pb_grpc.ImageTransferStub(channel)  # type: ignore[no-untyped-call]
            call = stub.PullImage(pb.PullImageRequest(image_id=image_id,
                                                      compression=compression),
                                  timeout=timeout_s)
            count = 0
            async for chunk in call:
                if chunk.ByteSize() <= _INLINE_BYTES:  # headers, ends, small files
                    receiver.feed(chunk)
                else:
                    await asyncio.to_thread(receiver.feed, chunk)
                count += 1
                if on_chunk is not None:
                    on_chunk(count)
        await asyncio.to_thread(receiver.finish)
    except grpc.aio.AioRpcError as exc:
        await asyncio.to_thread(receiver.abort)
        raise TransferError(f"pulling image {image_id} from {address} failed: "
                            f"{exc.code().name}: {exc.details()}") from exc
    except BaseException:
        await asyncio.to_thread(receiver.abort)
        raise
    seconds = time.monotonic() - started
    result = PullResult(receiver.files, receiver.raw_bytes, receiver.wire_bytes, seconds)
    log.info("image pulled", extra={"image": image_id, "from": address, "files": result.files,
                                    "raw_bytes": result.raw_bytes,
                                    "wire_bytes": result.wire_bytes,
                                    "seconds": round(seconds, 3)})
    return result
