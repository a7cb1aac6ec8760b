"""The node-to-node image service: two servers on loopback with real certificates.

What is checked: an image arrives byte for byte (modes, owners, symlinks, empty files,
folders); a client of another CA or without a client certificate is refused; a stream broken
midway and a corrupted chunk leave nothing behind; compression is used only where it pays;
the negotiated protocol is TLS 1.3.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from zeropod_migration._pb import transfer_pb2 as pb
from zeropod_migration.imagefs import ChecksumMismatch, ImageSender, TransferError
from zeropod_migration.service import ImageServer, pull_image
from zeropod_migration.tls import ClusterCA, NodeCredentials


def _tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (mode, uid, gid, sha256 or link target) of everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = "->" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = "dir"
            out[str(path.relative_to(root))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                                content)
    return out


def make_image(base: Path, image_id: str, *, random_mib: int = 2) -> Path:
    """A fake checkpoint image: random pages, compressible text, a folder, a symlink, a
    socket (never sent) and files of other owners and modes."""
    snapshot = base / image_id / "snapshot"
    (snapshot / "upper" / "data").mkdir(parents=True)
    (snapshot / "pages-1.img").write_bytes(os.urandom(random_mib << 20))
    (snapshot / "core-1.img").write_bytes(b"compressible line of text\n" * 100_000)
    (snapshot / "empty.img").write_bytes(b"")
    note = snapshot / "upper" / "data" / "note.txt"
    note.write_text("written by the app\n")
    os.chown(note, 1234, 5678)
    os.chmod(note, 0o640)
    os.chmod(snapshot / "upper" / "data", 0o750)
    (snapshot / "upper" / "link").symlink_to("data/note.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(snapshot / "lazy-pages.socket"))
    sock.close()
    return snapshot


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create()


@pytest.fixture(scope="module")
def node_a(ca: ClusterCA) -> NodeCredentials:
    return ca.issue("node-a", ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def node_b(ca: ClusterCA) -> NodeCredentials:
    return ca.issue("node-b", ["127.0.0.1"])


@pytest.fixture
async def server_a(tmp_path: Path, node_a: NodeCredentials) -> AsyncIterator[ImageServer]:
    server = ImageServer(tmp_path / "a", node_a, "127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(None)


def _addr(server: ImageServer) -> str:
    return f"127.0.0.1:{server.port}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_pull_copies_the_image_exactly(tmp_path: Path, server_a: ImageServer,
                                             node_b: NodeCredentials) -> None:
    snapshot = make_image(server_a.image_root, "c1")
    dest = tmp_path / "b" / "c2" / "snapshot"
    result = await pull_image(_addr(server_a), node_b, "c1", dest)
    expected = _tree(snapshot)
    del expected["lazy-pages.socket"]  # sockets are not image content
    assert _tree(dest) == expected
    assert result.files == 4
    assert result.raw_bytes == sum(p.stat().st_size for p in snapshot.rglob("*")
                                   if p.is_file() and not p.is_symlink())
    # random pages are sent raw, the text compressed: the wire carries less than the files
    assert result.wire_bytes < result.raw_bytes - 2_000_000
    assert _leftovers(dest.parent) == ["snapshot"]


async def test_both_directions_between_two_servers(tmp_path: Path, server_a: ImageServer,
                                                   node_a: NodeCredentials,
                                                   node_b: NodeCredentials) -> None:
    server_b = ImageServer(tmp_path / "b", node_b, "127.0.0.1:0")
    await server_b.start()
    try:
        make_image(server_a.image_root, "from-a", random_mib=1)
        make_image(server_b.image_root, "from-b", random_mib=1)
        await pull_image(_addr(server_a), node_b, "from-a", tmp_path / "b" / "x" / "snapshot")
        await pull_image(_addr(server_b), node_a, "from-b", tmp_path / "a" / "y" / "snapshot")
    finally:
        await server_b.stop(None)
    assert (tmp_path / "b" / "x" / "snapshot" / "pages-1.img").stat().st_size == 1 << 20
    assert (tmp_path / "a" / "y" / "snapshot" / "pages-1.img").stat().st_size == 1 << 20


async def test_a_client_of_another_ca_is_refused(tmp_path: Path,
                                                 server_a: ImageServer) -> None:
    make_image(server_a.image_root, "c1", random_mib=1)
    stranger = ClusterCA.create("another-ca").issue("intruder", ["127.0.0.1"])
    dest = tmp_path / "b" / "c2" / "snapshot"
    with pytest.raises(TransferError, match="UNAVAILABLE"):
        await pull_image(_addr(server_a), stranger, "c1", dest, timeout_s=10)
    assert _leftovers(dest.parent) == []


async def test_a_client_without_certificate_is_refused(tmp_path: Path, server_a: ImageServer,
                                                       node_b: NodeCredentials) -> None:
    make_image(server_a.image_root, "c1", random_mib=1)
    creds = grpc.ssl_channel_credentials(root_certificates=node_b.ca_pem)
    async with grpc.aio.secure_channel(_addr(server_a), creds) as channel:
        call = channel.unary_stream("/zeropod.migration.v1.ImageTransfer/PullImage",
                                    request_serializer=pb.PullImageRequest.SerializeToString,
                                    response_deserializer=pb.ImageChunk.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call(pb.PullImageRequest(image_id="c1"), timeout=10):
                pass
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_server_of_another_ca_is_not_trusted(tmp_path: Path,
                                                     node_b: NodeCredentials) -> None:
    impostor = ImageServer(tmp_path / "evil", ClusterCA.create("evil").issue(
        "node-a", ["127.0.0.1"]), "127.0.0.1:0")
    await impostor.start()
    try:
        make_image(impostor.image_root, "c1", random_mib=1)
        with pytest.raises(TransferError, match="UNAVAILABLE"):
            await pull_image(_addr(impostor), node_b, "c1", tmp_path / "b" / "snapshot",
                             timeout_s=10)
    finally:
        await impostor.stop(None)
    assert _leftovers(tmp_path / "b") == []


async def test_a_stream_broken_midway_leaves_nothing(tmp_path: Path, server_a: ImageServer,
                                                     node_b: NodeCredentials) -> None:
    make_image(server_a.image_root, "big", random_mib=32)
    dest = tmp_path / "b" / "c2" / "snapshot"
    stopping: list[asyncio.Task[None]] = []

    def on_chunk(count: int) -> None:
        if count == 5 and not stopping:  # inside the 32 MiB file: the source node goes away
            stopping.append(asyncio.get_running_loop().create_task(server_a.stop(None)))

    with pytest.raises(TransferError):
        await pull_image(_addr(server_a), node_b, "big", dest, on_chunk=on_chunk,
                         compression="none")
    await asyncio.gather(*stopping)
    assert _leftovers(dest.parent) == []


def _corrupting(folder: Path, compression: str, extras: Mapping[str, Path]) -> Iterator[Any]:
    """The normal stream with one byte of the third data chunk flipped."""
    seen = 0
    for chunk in ImageSender(folder, compression=compression, extras=extras).chunks():
        if chunk.WhichOneof("kind") == "data":
            seen += 1
            if seen == 3:
                data = bytearray(chunk.data)
                data[100] ^= 0xFF
                chunk = pb.ImageChunk(data=bytes(data))
        yield chunk


async def test_a_checksum_mismatch_is_detected_and_leaves_nothing(
        tmp_path: Path, node_a: NodeCredentials, node_b: NodeCredentials) -> None:
    server = ImageServer(tmp_path / "a", node_a, "127.0.0.1:0", chunks=_corrupting)
    await server.start()
    try:
        make_image(server.image_root, "c1", random_mib=4)
        dest = tmp_path / "b" / "c2" / "snapshot"
        with pytest.raises(ChecksumMismatch, match=r"core-1\.img: sha256"):
            await pull_image(_addr(server), node_b, "c1", dest, compression="none")
    finally:
        await server.stop(None)
    assert _leftovers(dest.parent) == []


async def test_unknown_and_unsafe_image_ids_are_refused(tmp_path: Path, server_a: ImageServer,
                                                        node_b: NodeCredentials) -> None:
    with pytest.raises(TransferError, match="NOT_FOUND"):
        await pull_image(_addr(server_a), node_b, "nothing", tmp_path / "d1")
    with pytest.raises(ValueError, match="invalid image id"):
        await pull_image(_addr(server_a), node_b, "../etc", tmp_path / "d2")
    assert _leftovers(tmp_path) == []  # not even a staging folder


def test_compression_only_where_it_pays(tmp_path: Path) -> None:
    snapshot = make_image(tmp_path, "c1", random_mib=1)
    sender = ImageSender(snapshot)
    headers = {c.file.path: c.file.compression for c in sender.chunks()
               if c.WhichOneof("kind") == "file" and c.file.kind == pb.REGULAR}
    assert headers == {"core-1.img": "zstd", "pages-1.img": "", "empty.img": "",
                       "upper/data/note.txt": ""}


async def test_the_handshake_is_tls_1_3(server_a: ImageServer,
                                        node_b: NodeCredentials, tmp_path: Path) -> None:
    for name, data in (("ca.pem", node_b.ca_pem), ("c.pem", node_b.cert_pem),
                       ("k.pem", node_b.key_pem)):
        (tmp_path / name).write_bytes(data)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    context.set_alpn_protocols(["h2"])

    def handshake() -> str | None:
        with socket.create_connection(("127.0.0.1", server_a.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()

    assert await asyncio.to_thread(handshake) == "TLSv1.3"


async def test_a_live_pull_waits_for_the_dump_and_then_gets_it(
        tmp_path: Path, server_a: ImageServer, node_b: NodeCredentials) -> None:
    """The target asks before the source's live dump is written: the pull waits at the
    gate and gets the image the dump then wrote."""
    server_a.gates.open("live1")
    dest = tmp_path / "b" / "t1" / "snapshot"
    pull = asyncio.ensure_future(pull_image(_addr(server_a), node_b, "live1", dest))
    await asyncio.sleep(0.5)
    assert not pull.done()  # no image yet: it waits instead of failing NOT_FOUND
    snapshot = make_image(server_a.image_root, "live1", random_mib=1)
    server_a.gates.ready("live1")
    result = await asyncio.wait_for(pull, 30)
    assert result.files == 4 and (dest / "pages-1.img").read_bytes() == \
        (snapshot / "pages-1.img").read_bytes()


async def test_a_live_pull_is_refused_when_the_dump_failed(
        tmp_path: Path, server_a: ImageServer, node_b: NodeCredentials) -> None:
    server_a.gates.open("live2")
    dest = tmp_path / "b" / "t2" / "snapshot"
    pull = asyncio.ensure_future(pull_image(_addr(server_a), node_b, "live2", dest))
    await asyncio.sleep(0.3)
    server_a.gates.fail("live2", "the app is not running")
    with pytest.raises(TransferError, match="FAILED_PRECONDITION: the app is not running"):
        await asyncio.wait_for(pull, 30)
    assert _leftovers(dest.parent) == []
    # a gate that is gone lets pulls through as before (here: nothing to pull)
    server_a.gates.close("live2")
    with pytest.raises(TransferError, match="NOT_FOUND"):
        await pull_image(_addr(server_a), node_b, "live2", dest)
