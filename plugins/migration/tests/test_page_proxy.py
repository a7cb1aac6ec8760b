"""The page-server proxies: plain TCP on the target -> mutual TLS 1.3 -> the source's
upstream (a stand-in for CRIU's page server that echoes what it gets and then streams a blob
the other way, as a page server answers requests with pages)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from zeropod_migration.pageproxy import SourceProxy, TargetProxy
from zeropod_migration.tls import ClusterCA, NodeCredentials

BLOB = os.urandom(8 << 20)


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create()


async def _page_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await reader.readexactly(64)
    except asyncio.IncompleteReadError:  # a handshake-only client (the TLS version test)
        writer.close()
        return
    writer.write(request)  # echo: the request went through unchanged
    writer.write(BLOB)  # then "pages"
    await writer.drain()
    writer.close()


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[str]:
    path = str(tmp_path / "ps.sock")  # a unix socket, as upstream's page server uses
    server = await asyncio.start_unix_server(_page_server, path)
    yield path
    server.close()
    await server.wait_closed()


async def _fetch(port: int) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = os.urandom(64)
    writer.write(request)
    await writer.drain()
    data = await reader.read(-1)
    writer.close()
    return request, data


async def _source(ca: ClusterCA, upstream: str) -> SourceProxy:
    source = SourceProxy(ca.issue("node-a", ["127.0.0.1"]), upstream=upstream,
                         listen=("127.0.0.1", 0))
    await source.start()
    return source


async def test_pages_cross_the_proxies_unchanged(ca: ClusterCA, upstream: str) -> None:
    source = await _source(ca, upstream)
    target = TargetProxy(ca.issue("node-b", ["127.0.0.1"]),
                         remote=("127.0.0.1", source.listen_port))
    port = await target.start()
    try:
        request, data = await _fetch(port)
    finally:
        await target.close()
        await source.close()
    assert data[:64] == request
    assert hashlib.sha256(data[64:]).digest() == hashlib.sha256(BLOB).digest()
    assert source.bytes_down == len(BLOB) + 64 and source.bytes_up == 64


async def test_a_proxy_of_another_ca_gets_nothing(ca: ClusterCA, upstream: str) -> None:
    source = await _source(ca, upstream)
    stranger = TargetProxy(ClusterCA.create("other").issue("x", ["127.0.0.1"]),
                           remote=("127.0.0.1", source.listen_port))
    port = await stranger.start()
    try:
        _, data = await _fetch(port)
    finally:
        await stranger.close()
        await source.close()
    assert data == b""  # the handshake failed: the connection is closed, no page leaks


def _handshake(port: int, creds: NodeCredentials, folder: Path, version: ssl.TLSVersion) -> str:
    for name, pem in (("ca", creds.ca_pem), ("c", creds.cert_pem), ("k", creds.key_pem)):
        (folder / f"{name}.pem").write_bytes(pem)
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    context.load_cert_chain(folder / "c.pem", folder / "k.pem")
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return str(tls.version())


async def test_the_source_proxy_speaks_only_tls_1_3(ca: ClusterCA, upstream: str,
                                                     tmp_path: Path) -> None:
    source = await _source(ca, upstream)
    client = ca.issue("node-b", ["127.0.0.1"])
    try:
        assert await asyncio.to_thread(_handshake, source.listen_port, client, tmp_path,
                                       ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(_handshake, source.listen_port, client, tmp_path,
                                    ssl.TLSVersion.TLSv1_2)
    finally:
        await source.close()
