"""Issue 10: vendor answers passed faithfully, callers' faults never blamed on vendors.

Misbehaving vendors are raw asyncio servers (they send what aiohttp would refuse to); callers that
abort or vanish are raw sockets. Each test names the defect it covers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import CapturedLogs
from tests.gateway_proc import GatewayProcess

RawScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawVendor:
    def __init__(self, script: RawScript) -> None:
        self.script = script
        self.calls = 0
        self.server: asyncio.Server | None = None
        self.closed_early = asyncio.Event()  # the gateway closed a connection before the answer

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def raw_vendor() -> AsyncIterator[Callable[[RawScript], Awaitable[RawVendor]]]:
    started: list[RawVendor] = []

    async def start(script: RawScript) -> RawVendor:
        v = RawVendor(script)
        v.server = await asyncio.start_server(v._handle, "127.0.0.1", 0)
        started.append(v)
        return v

    yield start
    for v in started:
        assert v.server is not None
        v.server.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """A request's head, and its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, length


def answering(answer: bytes, vendor_calls: list[bytes] | None = None) -> RawScript:
    """A raw vendor that answers every request on a connection with ``answer``."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, length = await read_head(reader)
            body = await reader.readexactly(length)
            if vendor_calls is not None:
                vendor_calls.append(head + body)
            writer.write(answer)
            await writer.drain()

    return script


async def raw_exchange(client: Any, request: bytes) -> bytes:
    """Send ``request`` to the gateway over a raw socket and read the whole answer (Connection: close)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return answer


def problem_of(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), answer[:300]
    parsed: dict[str, Any] = orjson.loads(body)
    return parsed


SCHEMA_ROUTES = {
    "v": """
        vendor = "v"
        expose = "all"

        [[route]]
        method = "GET"
        path = "/report/**"
        response_schema = "any.schema.json"
        response_schema_mode = "report"

        [[route]]
        method = "POST"
        path = "/keyed/**"
        idempotency = "optional"
    """
}
SCHEMA_FILES = {"transforms/any.schema.json": '{"type": ["object", "array", "string", "number", "null"]}'}


def config_for(url: str, extra: str = "") -> str:
    return f"""
        [gateway]
        max_body_bytes = 4194304

        [vendors.v]
        base_url = "{url}"
        timeout = {{ connect_seconds = 2.0, total_seconds = 5.0 }}
        {extra}
    """


# ------------------------------------------------------------------ (1) no Content-Type


@pytest.mark.parametrize("path", ["/v/plain", "/v/report/x", "/v/keyed/x"])
@pytest.mark.parametrize("body", [b"", b"hello"], ids=["empty", "body"])
async def test_an_answer_without_content_type_passes_without_one(
    gateway: Any, raw_vendor: Any, path: str, body: bytes
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    v = await raw_vendor(answering(answer))
    client = await gateway(config_for(v.url), SCHEMA_ROUTES, SCHEMA_FILES)
    method = "POST" if "keyed" in path else "GET"
    headers = {"Idempotency-Key": "k1"} if "keyed" in path else {}
    resp = await client.request(method, path, headers=headers, data=b"{}" if method == "POST" else None)
    assert resp.status == 200, await resp.text()
    assert "Content-Type" not in resp.headers
    assert await resp.read() == body
    if "keyed" in path:
        replay = await client.request(method, path, headers=headers, data=b"{}")
        assert replay.status == 200
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert "Content-Type" not in replay.headers
        assert await replay.read() == body


# ------------------------------------------------------------------ (2) buffered answers over 256 KiB


async def test_a_large_answer_on_a_report_mode_schema_route_arrives_whole(gateway: Any, vendor: Any) -> None:
    size = 1_000_000

    async def big(request: web.Request) -> web.Response:
        return web.json_response("a" * size)

    app = web.Application()
    app.router.add_get("/report/big", big)
    server = await vendor(app)
    client = await gateway(
        config_for(str(server.make_url("")).rstrip("/")),
        SCHEMA_ROUTES,
        SCHEMA_FILES,
    )
    resp = await client.get("/v/report/big", timeout=20)
    assert resp.status == 200
    assert len(await resp.read()) == size + 2


async def test_a_large_keyed_post_is_answered_and_sent_once(gateway: Any, vendor: Any) -> None:
    calls = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        calls.append(len(body))
        return web.Response(body=body, content_type="application/json")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/keyed/echo", echo)
    server = await vendor(app)
    client = await gateway(
        config_for(str(server.make_url("")).rstrip("/"), "idempotency = { max_body_bytes = 2097152 }"),
        SCHEMA_ROUTES,
        SCHEMA_FILES,
    )
    body = orjson.dumps({"data": "b" * 600_000})
    headers = {"Idempotency-Key": "big-1", "Content-Type": "application/json"}
    first = await client.post("/v/keyed/echo", data=body, headers=headers, timeout=20)
    assert first.status == 200
    assert await first.read() == body
    again = await client.post("/v/keyed/echo", data=body, headers=headers, timeout=20)
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == body
    assert calls == [len(body)]


@pytest.mark.parametrize("path", ["/v/report/x", "/v/keyed/x"])
async def test_a_reset_in_the_middle_of_a_buffered_answer_is_502_at_once(
    gateway: Any, raw_vendor: Any, path: str
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, length = await read_head(reader)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + b"a" * 600_000)
        await writer.drain()
        writer.transport.abort()

    v = await raw_vendor(script)
    # total_seconds = 30: a 504 would take that long; the test's own timeout is far shorter.
    client = await gateway(
        config_for(v.url).replace("total_seconds = 5.0", "total_seconds = 30.0")
        + "idempotency = { max_body_bytes = 4194304 }\nretry = { attempts = 1 }\n",
        SCHEMA_ROUTES,
        SCHEMA_FILES,
    )
    method = "POST" if "keyed" in path else "GET"
    resp = await client.request(method, path, headers={"Idempotency-Key": "r1"}, data=b"{}", timeout=15)
    assert resp.status == 502
    problem = await resp.json()
    assert "broke off" in problem["detail"]


# ------------------------------------------------------------------ (3) a caller's fault is its own


async def upload_and_abort(client: Any, method: str, path: str) -> None:
    """A caller announcing 10 MB, sending 100 KB of it and closing (curl -m 0.5 -T /dev/zero)."""
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n".encode() + b"0" * 100_000
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_aborted_uploads_are_499_and_never_open_the_circuit(
    gateway: Any, vendor: Any, logs: CapturedLogs, method: str
) -> None:
    async def sink(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", sink)
    server = await vendor(app)
    client = await gateway(
        config_for(
            str(server.make_url("")).rstrip("/"),
            "circuit = { failure_ratio = 0.5, min_requests = 5, window_seconds = 60, open_seconds = 60 }",
        ).replace("4194304", "20000000")
    )
    for _ in range(25):
        await upload_and_abort(client, method, "/v/upload")
    # Every aborted request has its access record; wait for the last ones to finish.
    for _ in range(200):
        if len([r for r in logs.access() if r["path"] == "/v/upload"]) == 25:
            break
        await asyncio.sleep(0.05)
    records = [r for r in logs.access() if r["path"] == "/v/upload"]
    assert [r["status"] for r in records] == [499] * 25
    assert not [r for r in logs.records() if r["event"] == "unhandled_error"]
    resp = await client.request(method, "/v/after", data=b"fine")
    assert resp.status == 200  # the circuit stayed closed: the vendor did nothing wrong
    assert await resp.text() == "ok"
    metrics = await (await client.get("/_gateway/metrics")).text()
    [line] = [x for x in metrics.splitlines() if x.startswith("gateway_requests_total") and '"499"' in x]
    assert line.endswith(" 25.0")
    assert 'gateway_circuit_open{vendor="v"} 0.0' in metrics


# ------------------------------------------------------------------ (4) a caller that leaves


async def test_a_caller_that_leaves_cancels_the_vendor_call(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()  # aiohttp cancels the handler when the gateway closes the connection
            raise
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = await vendor(app)
    client = await gateway(config_for(str(server.make_url("")).rstrip("/")).replace("5.0", "20.0"))
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /v/slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(started.wait(), 10)
    writer.transport.abort()
    await asyncio.wait_for(cancelled.wait(), 10)
    for _ in range(200):
        if logs.access():
            break
        await asyncio.sleep(0.05)
    [record] = logs.access()
    assert record["status"] == 499


async def test_a_keyed_request_whose_caller_left_finishes_and_is_replayed(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    started = asyncio.Event()
    calls = []

    async def slow(request: web.Request) -> web.Response:
        calls.append(await request.read())
        started.set()
        await asyncio.sleep(0.5)
        return web.json_response({"id": "ch_1"}, status=201)

    app = web.Application()
    app.router.add_post("/keyed/charge", slow)
    server = await vendor(app)
    client = await gateway(config_for(str(server.make_url("")).rstrip("/")), SCHEMA_ROUTES, SCHEMA_FILES)
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v/keyed/charge HTTP/1.1\r\nHost: x\r\nIdempotency-Key: gone-1\r\nContent-Length: 2\r\n\r\n{}"
    )
    await writer.drain()
    await asyncio.wait_for(started.wait(), 10)
    writer.transport.abort()
    # The caller retries with the same key: 409 while the first still runs, then the stored answer.
    for _ in range(200):
        resp = await client.post("/v/keyed/charge", data=b"{}", headers={"Idempotency-Key": "gone-1"})
        if resp.status != 409:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 201
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert await resp.json() == {"id": "ch_1"}
    assert calls == [b"{}"]
    # The first ran to its end without its caller: 499 all the same (its answer was never written).
    statuses = [r["status"] for r in logs.access() if r["path"] == "/v/keyed/charge"]
    assert statuses.count(499) == 1 and statuses[-1] == 201, statuses
    assert not [r for r in logs.records() if r["event"] == "unhandled_error"]


# ------------------------------------------------------------------ (6) a download that keeps flowing


async def test_a_streamed_download_outlasts_total_seconds_while_it_flows(gateway: Any, vendor: Any) -> None:
    block = b"d" * 65536

    async def flowing(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 16 * len(block)
        await response.prepare(request)
        for _ in range(16):  # 1.6 s in all, against total_seconds = 0.5
            await response.write(block)
            await asyncio.sleep(0.1)
        return response

    app = web.Application()
    app.router.add_get("/flow", flowing)
    server = await vendor(app)
    url = str(server.make_url("")).rstrip("/")
    client = await gateway(
        f"""
        [vendors.v]
        base_url = "{url}"
        timeout = {{ total_seconds = 0.5, read_idle_seconds = 1.0 }}
        """
    )
    resp = await client.get("/v/flow", timeout=20)
    assert resp.status == 200
    assert await resp.read() == block * 16


@pytest.mark.parametrize("length", [100, 1_000_000], ids=["read-whole", "streamed"])
async def test_a_download_that_stops_flowing_is_cut_after_read_idle(
    gateway: Any, raw_vendor: Any, logs: CapturedLogs, length: int
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(10)

    v = await raw_vendor(script)
    client = await gateway(
        f"""
        [vendors.v]
        base_url = "{v.url}"
        timeout = {{ total_seconds = 5, read_idle_seconds = 0.3 }}
        """
    )
    answer = await raw_exchange(client, b"GET /v/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    if length <= 65536:  # read whole before answering: nothing was sent yet, so a 504 says why
        assert answer.startswith(b"HTTP/1.1 504")
        assert problem_of(answer)["detail"] == "vendor v sent nothing of its answer for 0.3s"
        return
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"x" * 10)  # the head was sent; the connection was closed at the stall
    await asyncio.sleep(0.1)
    [event] = [r for r in logs.records() if r["event"] == "upstream_aborted"]
    assert event["error"] == "vendor v sent nothing of its answer for 0.3s"


async def test_read_idle_seconds_is_checked(write_config: Any) -> None:
    from gateway.config import ConfigError, load_config

    path = write_config('[vendors.v]\nbase_url = "http://127.0.0.1:1"\ntimeout = { read_idle_seconds = 0 }\n')
    with pytest.raises(ConfigError, match="read_idle_seconds: must be greater than 0"):
        load_config(path)


# ------------------------------------------------------------------ (9) an oversized head, (10) obs-text


async def test_a_vendor_head_of_ten_thousand_fields_is_502(gateway: Any, raw_vendor: Any) -> None:
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    v = await raw_vendor(answering(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 0\r\n\r\n"))
    client = await gateway(f'[vendors.v]\nbase_url = "{v.url}"\nretry = {{ attempts = 1 }}\n')
    resp = await client.get("/v/x")
    assert resp.status == 502
    assert "more than 200" in (await resp.json())["detail"]


@pytest.mark.parametrize("body", [b"ok", b"s" * 200_000], ids=["whole", "streamed"])
async def test_obs_text_in_a_vendor_header_reaches_the_caller_byte_for_byte(
    gateway: Any, raw_vendor: Any, body: bytes
) -> None:
    v = await raw_vendor(
        answering(
            b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
    )
    client = await gateway(f'[vendors.v]\nbase_url = "{v.url}"\n')
    answer = await raw_exchange(client, b"GET /v/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, got = answer.partition(b"\r\n\r\n")
    assert b"\r\nX-Name: caf\xe9\r\n" in head
    assert b"\r\nX-Utf8: caf\xc3\xa9\r\n" in head
    assert got == body


# ------------------------------------------------------------------ (3), (4) in a real process
# The test server (aiohttp_client) cancels handlers when a caller leaves; `gateway run` must do so too.


class ProcessClient:
    def __init__(self, port: int) -> None:
        self.host = "127.0.0.1"
        self.port = port


def access_records(gw: GatewayProcess) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in gw.output().splitlines() if line.startswith("{")]
    return [r for r in lines if r.get("event") == "access"]


@pytest.mark.slow
async def test_a_real_process_blames_callers_for_their_faults_and_cancels_for_leavers(
    vendor: Any, write_config: Any
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def sink(request: web.Request) -> web.Response:
        if request.path == "/slow":
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        await request.read()
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", sink)
    server = await vendor(app)
    url = str(server.make_url("")).rstrip("/")
    path = write_config(
        f"""
        [gateway]
        max_body_bytes = 20000000

        [vendors.v]
        base_url = "{url}"
        timeout = {{ total_seconds = 20 }}
        circuit = {{ failure_ratio = 0.5, min_requests = 5, window_seconds = 60, open_seconds = 60 }}
        """
    )
    gw = GatewayProcess(path)
    try:
        await asyncio.to_thread(gw.wait_ready)
        client = ProcessClient(gw.port)
        for method in ("POST", "PUT"):
            for _ in range(10):
                await upload_and_abort(client, method, "/v/upload")
        for _ in range(200):
            if len(access_records(gw)) >= 20:
                break
            await asyncio.sleep(0.05)
        records = access_records(gw)
        assert [r["status"] for r in records] == [499] * 20, gw.output()
        assert "unhandled_error" not in gw.output()
        ok = await raw_exchange(
            client, b"POST /v/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )
        assert ok.startswith(b"HTTP/1.1 200"), ok  # the circuit stayed closed

        _reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"GET /v/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(started.wait(), 10)
        writer.transport.abort()
        await asyncio.wait_for(cancelled.wait(), 10)  # the vendor's connection was closed
        for _ in range(200):
            if [r for r in access_records(gw) if r["path"] == "/v/slow"]:
                break
            await asyncio.sleep(0.05)
        [slow] = [r for r in access_records(gw) if r["path"] == "/v/slow"]
        assert slow["status"] == 499
    finally:
        gw.stop()


async def test_a_keyed_streamed_answer_whose_caller_left_frees_its_vendor_connection(
    gateway: Any, vendor: Any
) -> None:
    """Too large to keep for replay, the answer streams; with the caller gone nobody writes it, and the
    vendor connection under it must still be closed (not left busy in the pool forever)."""
    started = asyncio.Event()

    async def big(request: web.Request) -> web.StreamResponse:
        await request.read()
        started.set()
        await asyncio.sleep(0.3)  # the caller leaves meanwhile
        response = web.StreamResponse()
        response.content_length = 2_000_000
        await response.prepare(request)
        await response.write(b"b" * 2_000_000)
        return response

    app = web.Application()
    app.router.add_post("/keyed/big", big)
    server = await vendor(app)
    client = await gateway(config_for(str(server.make_url("")).rstrip("/")), SCHEMA_ROUTES, SCHEMA_FILES)
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v/keyed/big HTTP/1.1\r\nHost: x\r\nIdempotency-Key: big-gone\r\nContent-Length: 2\r\n\r\n{}"
    )
    await writer.drain()
    await asyncio.wait_for(started.wait(), 10)
    writer.transport.abort()
    pool = client.app.services.pool
    for _ in range(200):  # the run finishes in the background once the vendor answers
        await asyncio.sleep(0.05)
        if not any(origin._busy for origin in pool._origins.values()):
            break
    assert not any(origin._busy for origin in pool._origins.values())
