"""The pooled vendor client against real aiohttp servers: keep-alive, streaming both ways, TLS."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.upstream.pool import ConnectError, Endpoint, Pool, Timeout
from tests.streaming_vendor import StreamingVendor

LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

Server = Callable[..., Awaitable[TestServer]]


@dataclass(frozen=True)
class Limits:
    total: float | None = 10.0
    connect: float | None = 2.0
    read_idle: float | None = None


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool(user_agent="egress-gateway/test")
    yield p
    await p.close()


def endpoint(server: TestServer, *, tls: ssl.SSLContext | bool = True) -> Endpoint:
    url = server.make_url("/")
    assert url.raw_host is not None and url.port is not None
    return Endpoint(
        scheme=url.scheme, host=url.raw_host, port=url.port, host_header=f"{url.raw_host}:{url.port}", ssl=tls
    )


def echo_app(peers: set[Any] | None = None) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        if peers is not None:
            peers.add(request.transport)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "sha256": hashlib.sha256(body).hexdigest(),
                "size": len(body),
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_requests_share_a_keep_alive_connection(aiohttp_server: Server, pool: Pool) -> None:
    peers: set[Any] = set()
    server = await aiohttp_server(echo_app(peers))
    origin = pool.origin(endpoint(server))
    for i in range(5):
        response = await origin.request(
            "POST", f"/v1/things?i={i}", CIMultiDict({"X-I": str(i)}), b"x" * i, timeout=Limits()
        )
        assert response.status == 200
        data = orjson.loads(await response.read())
        response.release()
        assert data["path"] == f"/v1/things?i={i}" and data["size"] == i
        assert data["headers"]["X-I"] == str(i)
        assert data["headers"]["Host"] == f"127.0.0.1:{server.port}"
        assert data["headers"]["User-Agent"] == "egress-gateway/test"
    assert len(peers) == 1


async def test_many_concurrent_requests(aiohttp_server: Server, pool: Pool) -> None:
    server = await aiohttp_server(echo_app())
    origin = pool.origin(endpoint(server))

    async def one(i: int) -> int:
        response = await origin.request("GET", f"/c/{i}", CIMultiDict(), timeout=Limits())
        try:
            await response.read()
            return response.status
        finally:
            response.release()

    assert await asyncio.gather(*(one(i) for i in range(300))) == [200] * 300
    assert 1 <= origin._size <= 300


async def test_server_keepalive_timeout_closes_idle_connections_harmlessly(
    aiohttp_server: Server, pool: Pool
) -> None:
    peers: set[Any] = set()
    server = await aiohttp_server(echo_app(peers), keepalive_timeout=0.1)
    origin = pool.origin(endpoint(server))
    for _ in range(3):
        response = await origin.request("GET", "/k", CIMultiDict(), timeout=Limits())
        assert response.status == 200
        await response.read()
        response.release()
        await asyncio.sleep(0.3)  # the server closes the idle connection meanwhile
    assert len(peers) == 3


async def test_streaming_both_ways(aiohttp_server: Server, pool: Pool) -> None:
    """The vendor's first bytes reach the reader before the vendor has finished, and vice versa."""
    streaming = StreamingVendor()
    size, release, received_first = streaming.size, streaming.release, streaming.received_first
    app = streaming.app()
    server = await aiohttp_server(app)
    origin = pool.origin(endpoint(server))

    response = await origin.request("GET", "/big", CIMultiDict(), timeout=Limits(total=60))
    assert response.content_length == size
    chunks = response.iter_chunked(65536)
    first = await chunks.__anext__()
    release.set()
    total = len(first)
    async for chunk in chunks:
        total += len(chunk)
    response.release()
    assert total == size

    payload = os.urandom(1024) + b"y" * (5 * 1024 * 1024)

    async def slow_upload() -> AsyncIterator[bytes]:
        yield payload[:1024]
        await asyncio.wait_for(received_first.wait(), 10)
        for i in range(1024, len(payload), 1 << 20):
            yield payload[i : i + (1 << 20)]

    response = await origin.request("POST", "/up", CIMultiDict(), slow_upload(), timeout=Limits(total=60))
    assert orjson.loads(await response.read())["sha256"] == hashlib.sha256(payload).hexdigest()
    response.release()


async def test_slow_vendor_times_out(aiohttp_server: Server, pool: Pool) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = await aiohttp_server(app)
    with pytest.raises(Timeout):
        await pool.origin(endpoint(server)).request("GET", "/slow", CIMultiDict(), timeout=Limits(total=0.2))


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert_file, key_file = tmp_path / "vendor.pem", tmp_path / "vendor.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key_file), "-out", str(cert_file),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert_file, key_file


async def test_tls_verified_bundled_and_unverified(
    aiohttp_server: Server, pool: Pool, cert: tuple[Path, Path]
) -> None:
    peers: set[Any] = set()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    server = await aiohttp_server(echo_app(peers), ssl=context)
    assert server.make_url("/").scheme == "https"

    with pytest.raises(ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        await pool.origin(endpoint(server)).request("GET", "/", CIMultiDict(), timeout=Limits())

    bundle = ssl.create_default_context(cafile=str(cert[0]))
    for tls in (bundle, False):
        origin = pool.origin(endpoint(server, tls=tls))
        for _ in range(2):
            response = await origin.request("GET", "/tls", CIMultiDict(), timeout=Limits())
            assert response.status == 200
            await response.read()
            response.release()
    assert len(peers) == 2  # one kept-alive connection per origin
