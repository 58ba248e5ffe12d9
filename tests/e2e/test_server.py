"""The gateway's own server (gateway/http/server.py): the limits of docs/configuration.md's [gateway] and HTTP/1.1 framing,
seen from raw sockets, as a hostile or careless caller would use them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import CapturedLogs

LOOP_FACTORIES: dict[str, Any] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop

    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency
    pass

SECRET = "sk_live_never_echo_this_0123456789"


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 5)


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_all(reader)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    answer = Answer(head)
    length = int(answer.headers.get("content-length", "0"))
    answer.body = await asyncio.wait_for(reader.readexactly(length), 5)
    return answer


def counting_vendor(calls: list[bytes]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        calls.append(body)
        return web.json_response({"path": request.raw_path, "body": body.decode()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


Start = Callable[..., Awaitable[Any]]


async def start(gateway: Start, vendor: Start, calls: list[bytes], limits: str = "") -> Any:
    server = await vendor(counting_vendor(calls))
    return await gateway(
        f"""
        [gateway]
        {limits}
        [vendors.v]
        base_url = "{server.make_url("/")}"
        """
    )


def assert_problem(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["x-request-id"]
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == status and problem["request_id"] == answer.headers["x-request-id"]
    return problem


# -- timeouts --------------------------------------------------------------------------------------


async def test_a_head_dribbled_past_header_timeout_is_408_then_closed(
    gateway: Start, vendor: Start, logs: CapturedLogs
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls, "header_timeout_seconds = 0.3")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"GET /v/a HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        for _ in range(3):  # a byte now and then does not extend the deadline
            await asyncio.sleep(0.15)
            writer.write(b"x")
        raw = await read_all(reader)  # read() returns at EOF: the gateway closed the connection
    finally:
        writer.close()
    problem = assert_problem(Answer(raw), 408)
    assert "0.3s" in problem["detail"]
    assert calls == []
    (record,) = [r for r in logs.access() if r["status"] == 408]
    assert record["request_id"] == problem["request_id"] and record["path"] is None


async def test_an_idle_new_connection_is_closed_quietly_after_header_timeout(
    gateway: Start, vendor: Start
) -> None:
    client = await start(gateway, vendor, [], "header_timeout_seconds = 0.2")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        assert await read_all(reader) == b""
    finally:
        writer.close()


async def test_a_body_that_stops_is_408_and_never_reaches_or_blames_the_vendor(
    gateway: Start, vendor: Start, logs: CapturedLogs
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls, "body_timeout_seconds = 0.3")
    raw = await exchange(
        client.port, b"POST /v/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    )
    problem = assert_problem(Answer(raw), 408)
    assert "after 10 bytes" in problem["detail"]
    assert calls == []
    assert client.app.services.circuits.open_state() == {"v": 0}
    assert [r["status"] for r in logs.access()] == [408]


async def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(
    gateway: Start, vendor: Start
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls, "keepalive_timeout_seconds = 0.3")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"GET /v/a HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await read_answer(reader)).status == 200
        assert await read_all(reader) == b""  # closed by the gateway once idle for 0.3 s
    finally:
        writer.close()


# -- sizes -----------------------------------------------------------------------------------------


async def test_a_url_over_max_url_bytes_is_414_without_echo(
    gateway: Start, vendor: Start, logs: CapturedLogs
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls, "max_url_bytes = 1024")
    raw = await exchange(client.port, b"GET /v/" + SECRET.encode() * 100 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert_problem(Answer(raw), 414)
    assert SECRET.encode() not in raw and SECRET not in logs.getvalue().decode()
    assert calls == []


async def test_header_fields_over_max_header_bytes_are_431_without_echo(
    gateway: Start, vendor: Start, logs: CapturedLogs
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls, "max_header_bytes = 4096")
    big = b"Authorization: Bearer " + SECRET.encode() * 200 + b"\r\n"
    raw = await exchange(client.port, b"GET /v/a HTTP/1.1\r\nHost: gw\r\n" + big + b"\r\n")
    assert_problem(Answer(raw), 431)
    assert SECRET.encode() not in raw and SECRET not in logs.getvalue().decode()
    assert calls == []
    assert [r["status"] for r in logs.access()] == [431]


async def test_default_limits_let_a_large_but_legal_head_through(gateway: Start, vendor: Start) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    fields = {
        f"X-Big-{i}": "b" * 5000 for i in range(5)
    }  # 25 KB together (aiohttp, the vendor, takes 8 KB each)
    response = await client.get("/v/" + "a" * 7000, headers=fields)
    assert response.status == 200 and len(calls) == 1


# -- framing ---------------------------------------------------------------------------------------


async def test_expect_100_continue_comes_only_after_the_checks_pass(gateway: Start, vendor: Start) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls, "max_body_bytes = 1000")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            b"POST /v/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
        )
        refused = await read_answer(reader)  # the final answer at once, no "100 Continue" first
        assert_problem(refused, 413)
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"POST /v/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.json()["body"] == "hello"
    finally:
        writer.close()
    assert calls == [b"hello"]


async def test_pipelined_requests_are_answered_in_order(gateway: Start, vendor: Start) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            b"GET /v/one HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"POST /v/two HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /v/three HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        paths = [(await read_answer(reader)).json()["path"] for _ in range(3)]
    finally:
        writer.close()
    assert paths == ["/one", "/two", "/three"]
    assert calls == [b"", b"abc", b""]


async def test_broken_framing_behind_a_request_in_progress_closes_after_its_answer(
    gateway: Start, vendor: Start, logs: CapturedLogs
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    raw = await exchange(
        client.port,
        b"GET /v/one HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"GET /v/two HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n"
        b"GET /v/three HTTP/1.1\r\nHost: gw\r\n\r\n",
    )
    first = Answer(raw)
    length = int(first.headers["content-length"])
    assert first.status == 200 and orjson.loads(first.body[:length])["path"] == "/one"
    # As nginx: the request is answered as it asked (keep-alive), then the refusal says the close.
    assert "connection" not in first.headers
    refusal = Answer(first.body[length:])
    assert_problem(refusal, 400)
    assert refusal.headers["connection"] == "close"
    assert calls == [b""]  # nothing after the broken head was read as a request
    assert [r["event"] for r in logs.records() if r["level"] == "error"] == []


async def test_a_body_whose_framing_breaks_gets_one_answer(
    gateway: Start, vendor: Start, logs: CapturedLogs
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    head = b"POST /v/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = await exchange(client.port, head + b"3\r\nabc\r\nZZ\r\n")  # "ZZ" is no chunk size
    problem = assert_problem(Answer(raw), 400)
    assert "chunk size" in problem["detail"]
    assert raw.count(b"X-Request-Id: ") == 1  # not the request's answer and then the refusal again
    assert [r["status"] for r in logs.access()] == [400]
    assert calls == []


async def test_a_caller_that_said_close_gets_no_refusal_after_its_answer(
    gateway: Start, vendor: Start
) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    raw = await exchange(
        client.port, b"GET /v/a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\nGARBAGE\r\n"
    )
    answer = Answer(raw)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert raw.count(b"X-Request-Id: ") == 1  # nothing may follow an answer that said close
    assert calls == [b""]


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /v/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"GET /v/a HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n",
        b"GET /v/a HTTP/1.1\nHost: gw\n\n",
    ],
    ids=["cl-and-te", "two-cl", "te-not-chunked-last", "space-in-name", "bare-lf"],
)
async def test_ambiguous_framing_is_400_and_closes(gateway: Start, vendor: Start, head: bytes) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    raw = await exchange(client.port, head + b"GET /v/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert_problem(Answer(raw), 400)
    assert raw.count(b"X-Request-Id: ") == 1  # nothing after the refusal is read as a request
    assert calls == []


async def test_connect_is_501_and_options_star_is_a_problem(gateway: Start, vendor: Start) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    raw = await exchange(client.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert "forward proxy" in assert_problem(Answer(raw), 501)["detail"]
    raw = await exchange(client.port, b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert Answer(raw).headers["content-type"] == "application/problem+json"
    assert 400 <= Answer(raw).status < 500
    assert calls == []


async def test_http_1_0_gets_a_whole_answer_and_a_close(gateway: Start, vendor: Start) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls)
    raw = await exchange(client.port, b"GET /v/old HTTP/1.0\r\n\r\n")
    answer = Answer(raw)
    assert answer.status == 200 and answer.json()["path"] == "/old"
    assert raw.startswith(b"HTTP/1.1 200 ")


async def test_unknown_gateway_endpoints_and_methods_are_problems(gateway: Start, vendor: Start) -> None:
    client = await start(gateway, vendor, [])
    missing = await client.get("/_gateway/nope")
    assert missing.status == 404 and "/_gateway/health" in (await missing.json())["detail"]
    posted = await client.post("/_gateway/health")
    assert posted.status == 405 and posted.headers["Allow"] == "GET, HEAD"
    assert posted.headers["Content-Type"] == "application/problem+json"


# -- connections -----------------------------------------------------------------------------------


async def test_past_max_connections_new_callers_wait_until_one_closes(gateway: Start, vendor: Start) -> None:
    calls: list[bytes] = []
    client = await start(gateway, vendor, calls, "max_connections = 2")
    held = [await asyncio.open_connection("127.0.0.1", client.port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)  # in the kernel's backlog
    try:
        writer.write(b"GET /v/waiting HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        done, _ = await asyncio.wait({head}, timeout=0.5)
        assert not done and calls == []  # not taken: no slot
        held[0][1].close()  # a slot frees: the waiting caller is taken and answered
        answer = Answer(await asyncio.wait_for(head, 5))
        assert answer.status == 200
        assert (
            orjson.loads(await reader.readexactly(int(answer.headers["content-length"])))["path"]
            == "/waiting"
        )
    finally:
        writer.close()
        for _, w in held:
            w.close()


async def test_a_caller_that_leaves_mid_answer_is_499_and_the_gateway_keeps_serving(
    gateway: Start, vendor: Start, logs: CapturedLogs
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x" * 1000)
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/slow", slow)

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/fast", fast)
    server = await vendor(app)
    client = await gateway(f'[vendors.v]\nbase_url = "{server.make_url("/")}"\n')
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /v/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    for _ in range(100):
        if logs.access():
            break
        await asyncio.sleep(0.05)
    release.set()
    assert [r["status"] for r in logs.access()] == [499]
    assert (await client.get("/v/fast")).status == 200
