"""The proxy core end to end: a real gateway socket in front of a real local vendor socket."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
from typing import Any

import orjson
from aiohttp import ClientSession, web

from tests.conftest import CapturedLogs
from tests.gateway_proc import free_port
from tests.streaming_vendor import StreamingVendor


def echo_app(seen: list[dict[str, Any]] | None = None) -> web.Application:
    """A vendor that answers with what it received."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        record = {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
        }
        if seen is not None:
            seen.append(record)
        return web.json_response(record, headers={"X-Vendor": "yes"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def header_names(record: dict[str, Any]) -> set[str]:
    return {k.lower() for k, _ in record["headers"]}


def header(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


async def test_get_passes_through_with_query_and_status(gateway: Any, vendor: Any) -> None:
    server = await vendor(echo_app())
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/base")}"\n')
    resp = await client.get("/acme/v1/things?limit=3&b=%20x&a=1&a=2")
    assert resp.status == 200
    body = await resp.json()
    assert body["path"] == "/base/v1/things?limit=3&b=%20x&a=1&a=2"
    assert body["method"] == "GET"
    assert resp.headers["X-Vendor"] == "yes"
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_vendor_errors_pass_through_unchanged(gateway: Any, vendor: Any) -> None:
    async def teapot(request: web.Request) -> web.Response:
        return web.Response(
            status=418, body=b'{"error":"short and stout"}', content_type="application/vnd.x+json"
        )

    app = web.Application()
    app.router.add_get("/brew", teapot)
    server = await vendor(app)
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    resp = await client.get("/acme/brew")
    assert resp.status == 418
    assert resp.headers["Content-Type"] == "application/vnd.x+json"
    assert await resp.read() == b'{"error":"short and stout"}'


async def test_hop_by_hop_and_internal_headers_are_not_forwarded(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_app(seen))
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    resp = await client.get(
        "/acme/x",
        headers={
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret-route",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Upgrade": "websocket",
            "Proxy-Authorization": "Basic cHJveHk6cHc=",
            "X-Forwarded-For": "10.1.2.3",
            "X-Forwarded-Host": "internal.svc",
            "X-Forwarded-Proto": "http",
            "Forwarded": "for=10.1.2.3",
            "Via": "1.1 internal-proxy",
            "X-Gateway-Key": "caller-key",
            "X-Custom": "kept",
            "Host": "gateway.internal",
        },
    )
    assert resp.status == 200
    record = seen[0]
    names = header_names(record)
    for dropped in (
        "x-private-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "via",
        "x-gateway-key",
    ):
        assert dropped not in names, dropped
    assert header(record, "X-Custom") == ["kept"]
    assert header(record, "Host") == [f"127.0.0.1:{server.port}"]
    assert header(record, "Connection") != ["keep-alive, X-Private-Hop"]


async def test_hop_by_hop_response_headers_are_not_returned(gateway: Any, vendor: Any) -> None:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            text="ok",
            headers={
                "Connection": "X-Vendor-Hop",
                "X-Vendor-Hop": "1",
                "Proxy-Authenticate": "Basic",
                "Keep-Alive": "timeout=99",
                "Upgrade": "h2c",
                "X-Normal": "1",
            },
        )

    app = web.Application()
    app.router.add_get("/x", handle)
    server = await vendor(app)
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    resp = await client.get("/acme/x")
    assert resp.status == 200
    for name in ("X-Vendor-Hop", "Proxy-Authenticate", "Keep-Alive", "Upgrade"):
        assert name not in resp.headers, name
    assert resp.headers["X-Normal"] == "1"


async def test_request_id_is_kept_or_generated_and_reaches_the_vendor(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_app(seen))
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    resp = await client.get("/acme/x", headers={"X-Request-Id": "req-123"})
    assert resp.headers["X-Request-Id"] == "req-123"
    assert header(seen[0], "X-Request-Id") == ["req-123"]

    resp = await client.get("/acme/x")
    generated = resp.headers["X-Request-Id"]
    assert len(generated) == 32
    assert header(seen[1], "X-Request-Id") == [generated]

    resp = await client.get("/nope/x", headers={"X-Request-Id": "req-404"})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] == "req-404"
    assert (await resp.json())["request_id"] == "req-404"
    assert [r["request_id"] for r in logs.access()] == ["req-123", generated, "req-404"]


async def test_unknown_vendor_and_undeclared_route_are_404_problems(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_app(seen))
    client = await gateway(
        f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n',
        routes={
            "acme": 'vendor = "acme"\nexpose = "declared"\n[[route]]\nmethod = "GET"\npath = "/v1/ok/*"\n'
        },
    )
    resp = await client.get("/ghost/v1/x")
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == 404 and "ghost" in problem["detail"]
    assert set(problem) >= {"type", "title", "status", "detail", "request_id"}

    assert (await client.get("/acme/v1/ok/1")).status == 200
    assert (await client.post("/acme/v1/ok/1")).status == 404
    assert (await client.get("/acme/v1/ok")).status == 404
    assert (await client.get("/acme/v1/other")).status == 404
    assert [r["path"] for r in seen] == ["/v1/ok/1"]


async def test_body_over_max_body_bytes_is_413(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_app(seen))
    client = await gateway(
        f'[gateway]\nmax_body_bytes = 1000\n[vendors.acme]\nbase_url = "{server.make_url("/")}"\n'
    )
    resp = await client.post("/acme/x", data=b"a" * 1001)
    assert resp.status == 413
    assert resp.headers["Content-Type"] == "application/problem+json"

    async def chunks() -> Any:
        for _ in range(10):
            yield b"b" * 500  # no Content-Length: counted while streaming

    resp = await client.post("/acme/x", data=chunks())
    assert resp.status == 413
    assert seen == [] or all(len(r["body"]) <= 1000 for r in seen)

    resp = await client.post("/acme/x", data=b"c" * 1000)
    assert resp.status == 200
    assert (await resp.json())["body"] == "c" * 1000


async def test_large_bodies_stream_both_ways(gateway: Any, vendor: Any) -> None:
    """The vendor's first bytes reach the caller before the vendor has finished, and vice versa."""
    streaming = StreamingVendor()
    size, chunk, release, received_first_chunk = (
        streaming.size,
        streaming.block,
        streaming.release,
        streaming.received_first,
    )
    app = streaming.app()
    server = await vendor(app)
    client = await gateway(
        f'[gateway]\nmax_body_bytes = {size * 2}\n[vendors.acme]\nbase_url = "{server.make_url("/")}"\n'
    )

    resp = await client.get("/acme/big")
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == size
    first = await resp.content.readexactly(len(chunk))
    assert first == chunk
    release.set()
    rest = 0
    async for data in resp.content.iter_chunked(1 << 20):
        rest += len(data)
    assert len(first) + rest == size

    payload = os.urandom(1024) + b"x" * (5 * 1024 * 1024)

    async def slow_upload() -> Any:
        yield payload[:1024]
        await asyncio.wait_for(received_first_chunk.wait(), 10)  # vendor got it before we sent more
        for i in range(1024, len(payload), 1 << 20):
            yield payload[i : i + (1 << 20)]

    resp = await client.post("/acme/up", data=slow_upload())
    assert resp.status == 200
    assert (await resp.json())["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_compressed_responses_pass_byte_for_byte(gateway: Any, vendor: Any) -> None:
    raw = gzip.compress(orjson.dumps({"k": "v" * 1000}))

    async def handle(request: web.Request) -> web.Response:
        assert request.headers.get("Accept-Encoding") == "gzip"
        return web.Response(
            body=raw, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_get("/z", handle)
    server = await vendor(app)
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    async with ClientSession(auto_decompress=False) as session:
        resp = await session.get(client.make_url("/acme/z"), headers={"Accept-Encoding": "gzip"})
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == raw


async def test_no_accept_encoding_is_invented(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_app(seen))
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    async with ClientSession(
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept", "Content-Type")
    ) as session:
        await (await session.post(client.make_url("/acme/x"), data=b"raw")).read()
    names = header_names(seen[0])
    assert "accept-encoding" not in names
    assert "content-type" not in names  # nothing the caller did not send
    assert header(seen[0], "User-Agent")[0].startswith("egress-gateway/")


async def test_vendor_cookies_are_not_replayed_to_other_callers(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def set_cookie(request: web.Request) -> web.Response:
        seen.append({"cookie": request.headers.get("Cookie")})
        resp = web.Response(text="ok")
        resp.set_cookie("session", "callerA")
        return resp

    app = web.Application()
    app.router.add_get("/c", set_cookie)
    server = await vendor(app)
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    async with ClientSession() as a, ClientSession() as b:
        first = await a.get(client.make_url("/acme/c"))
        assert "session=callerA" in first.headers["Set-Cookie"]
        await b.get(client.make_url("/acme/c"))
    assert seen == [{"cookie": None}, {"cookie": None}]


async def test_head_keeps_content_length(gateway: Any, vendor: Any) -> None:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 12345)

    app = web.Application()
    app.router.add_get("/h", handle)
    server = await vendor(app)
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    resp = await client.head("/acme/h")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "12345"
    assert await resp.read() == b""


async def test_slow_vendor_is_504_and_unreachable_vendor_is_502(gateway: Any, vendor: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = await vendor(app)
    dead_port = free_port()  # free a moment ago: nothing listens there
    client = await gateway(
        f"""
        [vendors.slow]
        base_url = "{server.make_url("/")}"
        timeout = {{ connect_seconds = 1, total_seconds = 0.3 }}
        [vendors.dead]
        base_url = "http://127.0.0.1:{dead_port}"
        """
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.get("/slow/slow")
    assert resp.status == 504
    assert loop.time() - started < 2
    problem = await resp.json()
    assert problem["status"] == 504 and "slow" in problem["detail"]

    resp = await client.get("/dead/x")
    assert resp.status == 502
    problem = await resp.json()
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "dead" in problem["detail"] and "unreachable" in problem["detail"]


async def test_static_auth_replaces_what_the_caller_sent(gateway: Any, vendor: Any, monkeypatch: Any) -> None:
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_app(seen))
    monkeypatch.setenv("GW_T_TOKEN", "vendor-token")
    base = server.make_url("/")
    client = await gateway(
        f"""
        [vendors.bearer]
        base_url = "{base}"
        auth = {{ type = "bearer", token = "env:GW_T_TOKEN" }}
        [vendors.hdr]
        base_url = "{base}"
        auth = {{ type = "header", name = "X-Api-Key", value = "env:GW_T_TOKEN" }}
        [vendors.qry]
        base_url = "{base}"
        auth = {{ type = "query", name = "api_key", value = "env:GW_T_TOKEN" }}
        [vendors.basic]
        base_url = "{base}"
        auth = {{ type = "basic", username = "me", password = "env:GW_T_TOKEN" }}
        """
    )
    await client.get("/bearer/x", headers={"Authorization": "Bearer forged"})
    await client.get("/hdr/x", headers={"X-Api-Key": "forged"})
    await client.get("/qry/x?api_key=forged&api%5Fkey=forged2&keep=1")
    await client.get("/basic/x", headers={"Authorization": "Basic Zm9yZ2Vk"})
    assert header(seen[0], "Authorization") == ["Bearer vendor-token"]
    assert header(seen[1], "X-Api-Key") == ["vendor-token"]
    assert seen[2]["path"] == "/x?keep=1&api_key=vendor-token"
    assert header(seen[3], "Authorization") == ["Basic bWU6dmVuZG9yLXRva2Vu"]


async def test_access_log_has_the_contract_fields(gateway: Any, vendor: Any, logs: CapturedLogs) -> None:
    server = await vendor(echo_app())
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    await client.post("/acme/x?secret=query-value", data=b"12345")
    (record,) = logs.access()
    for key in (
        "request_id",
        "client",
        "vendor",
        "route",
        "method",
        "status",
        "duration_ms",
        "upstream_ms",
        "attempts",
        "bytes_in",
        "bytes_out",
    ):
        assert key in record, key
    assert record["vendor"] == "acme" and record["status"] == 200 and record["method"] == "POST"
    assert record["bytes_in"] == 5 and record["bytes_out"] > 0 and record["attempts"] == 1
    assert record["upstream_ms"] <= record["duration_ms"]
    assert "query-value" not in logs.getvalue().decode()


async def test_health_and_ready(gateway: Any) -> None:
    client = await gateway('[vendors.acme]\nbase_url = "http://127.0.0.1:9"\n')
    resp = await client.get("/_gateway/health")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/_gateway/ready")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready" and body["vendors"] == ["acme"]
    resp = await client.get("/_gateway/nope")
    assert resp.status == 404
