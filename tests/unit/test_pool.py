"""The pooled vendor client against scripted raw asyncio servers: framing, reuse, stale connections,
timeouts and backpressure. Every test runs on asyncio's loop and on uvloop (the one the gateway uses)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop
from multidict import CIMultiDict

from gateway.upstream import pool as pool_module
from gateway.upstream.pool import (
    DEADLINE_TICK,
    HIGH_WATER,
    BodyError,
    ConnectError,
    Disconnected,
    Endpoint,
    Pool,
    ProtocolError,
    Timeout,
)
from tests.gateway_proc import free_port

# Read by tests/conftest.py: every test here runs on both loops.
LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@dataclass(frozen=True)
class Limits:
    total: float | None = 5.0
    connect: float | None = 2.0
    read_idle: float | None = None


LIMITS = Limits()


@dataclass
class Request:
    head: bytes
    body: bytes

    @property
    def lines(self) -> list[str]:
        return self.head.decode().split("\r\n")

    def header(self, name: str) -> list[str]:
        prefix = name.lower() + ": "
        return [line[len(prefix) :] for line in self.lines[1:] if line.lower().startswith(prefix)]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request off the wire (Content-Length or chunked body), None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request = Request(head[:-4], b"")
    if length := request.header("Content-Length"):
        request.body = await reader.readexactly(int(length[0]))
    elif request.header("Transfer-Encoding") == ["chunked"]:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(data[:-2])
        request.body = b"".join(parts)
    return request


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Vendor"], Awaitable[None]]


@dataclass
class Vendor:
    """A raw TCP vendor: ``script`` runs once per accepted connection."""

    script: Script
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.script(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def vendor() -> AsyncIterator[Callable[[Script], Awaitable[Vendor]]]:
    started: list[Vendor] = []

    async def start(script: Script) -> Vendor:
        v = Vendor(script)
        v.server = await asyncio.start_server(v._handle, "127.0.0.1", 0)
        started.append(v)
        return v

    yield start
    for v in started:
        assert v.server is not None
        v.server.close()
        for w in v.writers:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(v.server.wait_closed(), 1)


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool(user_agent="egress-gateway/test")
    yield p
    await p.close()


def endpoint(v: Vendor) -> Endpoint:
    return Endpoint(scheme="http", host="127.0.0.1", port=v.port, host_header=f"127.0.0.1:{v.port}")


def answer(body: bytes = b"ok", status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def serve(*answers: bytes, then_close: bool = False) -> Script:
    """Answer each request on a connection with the next of ``answers`` (the last one repeats)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        i = 0
        while (request := await read_request(reader)) is not None:
            v.requests.append(request)
            writer.write(answers[min(i, len(answers) - 1)])
            await writer.drain()
            i += 1
            if then_close:
                return

    return script


async def get(
    p: Pool, v: Vendor, target: str = "/x", *, limits: Limits = LIMITS, **kwargs: object
) -> tuple[int, bytes]:
    response = await p.origin(endpoint(v)).request("GET", target, CIMultiDict(), timeout=limits, **kwargs)
    try:
        return response.status, await response.read()
    finally:
        response.release()


# --------------------------------------------------------------------------- framing


async def test_get_answer_and_keep_alive_reuse(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(
        serve(answer(b'{"a":1}', extra="Content-Type: application/json\r\nX-Two: a\r\nX-Two: b\r\n"))
    )
    origin = pool.origin(endpoint(v))
    response = await origin.request("GET", "/base/x?q=1%202", CIMultiDict({"X-Req": "1"}), timeout=LIMITS)
    assert (response.status, response.reason, response.content_length) == (200, "OK", 7)
    assert response.headers["content-type"] == "application/json"
    assert response.headers.getall("X-Two") == ["a", "b"]
    assert await response.read() == b'{"a":1}'
    response.release()
    assert await get(pool, v) == (200, b'{"a":1}')
    assert v.connections == 1
    first = v.requests[0]
    assert first.lines[0] == "GET /base/x?q=1%202 HTTP/1.1"
    assert first.lines[1] == f"Host: 127.0.0.1:{v.port}"
    assert first.header("X-Req") == ["1"]
    assert first.header("User-Agent") == ["egress-gateway/test"]
    assert first.header("Content-Length") == []  # a GET without a body announces none
    assert first.header("Connection") == [] and first.header("Accept-Encoding") == []


async def test_request_framing(vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool) -> None:
    v = await vendor(serve(answer()))
    origin = pool.origin(endpoint(v))

    async def send(method: str, headers: dict[str, str], body: object) -> Request:
        response = await origin.request(method, "/f", CIMultiDict(headers), body, timeout=LIMITS)
        await response.read()
        response.release()
        return v.requests[-1]

    async def stream() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defg"

    posted = await send("POST", {"User-Agent": "caller/1"}, b"payload")
    assert posted.header("Content-Length") == ["7"] and posted.body == b"payload"
    assert posted.header("User-Agent") == ["caller/1"]
    empty = await send("POST", {}, None)
    assert empty.header("Content-Length") == ["0"]
    deleted = await send("DELETE", {}, None)
    assert deleted.header("Content-Length") == ["0"]
    chunked = await send("PUT", {}, stream())
    assert chunked.header("Transfer-Encoding") == ["chunked"] and chunked.header("Content-Length") == []
    assert chunked.body == b"abcdefg"
    sized = await send("PUT", {"Content-Length": "7"}, stream())
    assert sized.header("Transfer-Encoding") == [] and sized.body == b"abcdefg"
    assert v.connections == 1


async def test_cr_or_lf_in_a_header_is_refused_before_sending(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(serve(answer()))
    origin = pool.origin(endpoint(v))
    for bad in ({"X-A": "1\r\nX-Injected: 1"}, {"X-A": "1\nX: 2"}, {"X-A": "1\r"}):
        with pytest.raises(ValueError, match="CR or LF"):
            await origin.request("GET", "/", CIMultiDict(bad), timeout=LIMITS)
    with pytest.raises(ValueError):
        await origin.request("GET", "/x HTTP/1.1\r\nX: y", CIMultiDict(), timeout=LIMITS)
    assert v.requests == []


async def test_non_utf8_header_bytes_pass_unchanged(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nX-Raw: caf\xe9\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    v = await vendor(script)
    raw = b"\xff\xfe".decode("utf-8", "surrogateescape")
    response = await pool.origin(endpoint(v)).request("GET", "/", CIMultiDict({"X-B": raw}), timeout=LIMITS)
    assert b"X-B: \xff\xfe\r\n" in seen[0]
    assert response.headers["X-Raw"].encode("utf-8", "surrogateescape") == b"caf\xe9"
    response.release()


async def test_chunked_answer_then_reuse(vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    v = await vendor(serve(chunked))
    origin = pool.origin(endpoint(v))
    response = await origin.request("GET", "/", CIMultiDict(), timeout=LIMITS)
    assert response.content_length is None and response.headers["Transfer-Encoding"] == "chunked"
    assert await response.read() == b"abcde"
    response.release()
    assert await get(pool, v) == (200, b"abcde")
    assert v.connections == 1


async def test_connection_close_and_http10_are_not_reused(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(serve(answer(extra="Connection: close\r\n")))
    assert await get(pool, v) == (200, b"ok")
    assert await get(pool, v) == (200, b"ok")
    assert v.connections == 2

    old = await vendor(serve(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert await get(pool, old) == (200, b"ok")
    assert await get(pool, old) == (200, b"ok")
    assert old.connections == 2


async def test_answer_without_length_ends_with_the_connection(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(
        serve(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", then_close=True)
    )
    response = await pool.origin(endpoint(v)).request("GET", "/", CIMultiDict(), timeout=LIMITS)
    assert response.content_length is None
    assert await response.read() == b"until the end"
    response.release()
    assert await get(pool, v) == (200, b"until the end")
    assert v.connections == 2


async def test_head_204_304_and_informational_answers(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        while (request := await read_request(reader)) is not None:
            v.requests.append(request)
            path = request.lines[0].split()[1]
            if request.lines[0].startswith("HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
            elif path == "/204":
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif path == "/304":
                writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
            elif path == "/103":
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
                await writer.drain()
                writer.write(answer(b"final"))
            else:
                writer.write(answer(b"plain"))
            await writer.drain()

    v = await vendor(script)
    origin = pool.origin(endpoint(v))
    head = await origin.request("HEAD", "/h", CIMultiDict(), timeout=LIMITS)
    assert head.status == 200 and head.content_length == 12345
    assert await head.read() == b""
    head.release()
    for path, status in (("/204", 204), ("/304", 304)):
        assert await get(pool, v, path) == (status, b"")
    response = await origin.request("GET", "/103", CIMultiDict(), timeout=LIMITS)
    assert response.status == 200 and "Link" not in response.headers
    assert await response.read() == b"final"
    response.release()
    assert await get(pool, v) == (200, b"plain")
    assert v.connections == 1


# --------------------------------------------------------------------------- stale and broken connections


async def test_vendor_closing_an_idle_connection_does_not_fail_the_next_request(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(serve(answer(), then_close=True))  # answers, then closes the idle connection
    for _ in range(3):
        assert await get(pool, v) == (200, b"ok")
        await asyncio.sleep(0.05)  # the close reaches us while the connection is idle
    assert v.connections == 3
    assert pool.origin(endpoint(v))._idle == []


def crossing_close(answered: bytes = b"") -> Script:
    """The first connection answers once, then takes the next request and closes without answering
    (as if its idle timeout crossed the request on the wire); later connections answer normally."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        first = v.connections == 1
        while (request := await read_request(reader)) is not None:
            v.requests.append(request)
            if first and len(v.requests) == 2:
                if answered:
                    writer.write(answered)
                    await writer.drain()
                return
            writer.write(answer())
            await writer.drain()

    return script


async def test_a_close_crossing_an_idempotent_request_is_retried_once_on_a_fresh_connection(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(crossing_close())
    assert await get(pool, v) == (200, b"ok")
    assert await get(pool, v) == (200, b"ok")  # sent twice: lost on the first connection, then fresh
    assert v.connections == 2 and len(v.requests) == 3


@pytest.mark.parametrize(
    ("method", "body", "idempotent"),
    [("POST", b"x", None), ("GET", None, False), ("PUT", "stream", None)],
)
async def test_no_retry_when_resending_could_do_harm(
    vendor: Callable[[Script], Awaitable[Vendor]],
    pool: Pool,
    method: str,
    body: object,
    idempotent: bool | None,
) -> None:
    v = await vendor(crossing_close())
    assert await get(pool, v) == (200, b"ok")

    async def stream() -> AsyncIterator[bytes]:
        yield b"streamed"

    payload = stream() if body == "stream" else body
    with pytest.raises(Disconnected, match="closed before an answer"):
        await pool.origin(endpoint(v)).request(
            method,
            "/",
            CIMultiDict(),
            payload,
            timeout=LIMITS,
            idempotent=idempotent,
        )
    assert v.connections == 1


async def test_no_retry_once_part_of_an_answer_came(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(crossing_close(answered=b"HTTP/1.1 200 OK\r\nContent-"))
    assert await get(pool, v) == (200, b"ok")
    with pytest.raises(Disconnected):
        await get(pool, v)
    assert v.connections == 1


async def test_a_fresh_connection_closed_before_an_answer_is_not_retried(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        await read_request(reader)

    v = await vendor(script)
    with pytest.raises(Disconnected, match="closed before an answer"):
        await get(pool, v)
    assert v.connections == 1


async def test_truncated_body_fails_the_reader(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", then_close=True))
    response = await pool.origin(endpoint(v)).request("GET", "/", CIMultiDict(), timeout=LIMITS)
    with pytest.raises(Disconnected, match="middle of the answer") as caught:
        await response.read()
    assert caught.value.answered
    response.release()

    chunks: list[bytes] = []
    response = await pool.origin(endpoint(v)).request("GET", "/", CIMultiDict(), timeout=LIMITS)
    with pytest.raises(Disconnected):
        async for chunk in response.iter_chunked(4):
            chunks.append(chunk)
    assert b"".join(chunks) == b"only this"  # what did arrive is handed out before the error
    response.release()


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Del: a\x7fb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
)
async def test_invalid_answers_are_protocol_errors(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool, garbage: bytes
) -> None:
    v = await vendor(serve(garbage))
    with pytest.raises(ProtocolError):
        await get(pool, v)


async def test_too_many_header_bytes_is_a_protocol_error(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    big = "".join(f"X-H{i}: {'v' * 1000}\r\n" for i in range(80))
    v = await vendor(serve(answer(extra=big)))
    with pytest.raises(ProtocolError, match=r"more than \d+ bytes"):
        await get(pool, v)

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):  # a head that never ends, in small writes
            writer.write(f"X-H{i}: {'v' * 100}\r\n".encode())
            await writer.drain()

    w = await vendor(endless)
    with pytest.raises(ProtocolError, match=r"a head of more than \d+ bytes"):
        await get(pool, w)


async def test_unasked_bytes_close_the_connection(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    # Two answers to one request, and bytes on an idle connection: neither connection is used again.
    v = await vendor(serve(answer() + answer(b"extra")))
    assert await get(pool, v) == (200, b"ok")
    await asyncio.sleep(0.05)
    assert await get(pool, v) == (200, b"ok")
    assert v.connections == 2

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await read_request(reader)

    w = await vendor(chatty)
    assert await get(pool, w) == (200, b"ok")
    await asyncio.sleep(0.1)
    assert await get(pool, w) == (200, b"ok")
    assert w.connections == 2


async def test_connect_refused_is_a_connect_error(pool: Pool) -> None:
    port = free_port()  # free a moment ago: nothing listens there
    dead = Endpoint(scheme="http", host="127.0.0.1", port=port, host_header=f"127.0.0.1:{port}")
    with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}"):
        await pool.origin(dead).request("GET", "/", CIMultiDict(), timeout=LIMITS)


# --------------------------------------------------------------------------- timeouts and limits


async def test_deadlines_are_kept_within_a_tick_and_the_ticker_stops(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    v = await vendor(script)
    loop = asyncio.get_running_loop()
    for total in (0.05, 0.15):
        started = loop.time()
        with pytest.raises(Timeout):
            await get(pool, v, limits=Limits(total=total))
        elapsed = loop.time() - started
        assert total <= elapsed + 0.005 and elapsed < total + 2 * DEADLINE_TICK + 0.1, (total, elapsed)
    await asyncio.sleep(3 * DEADLINE_TICK)
    assert pool._ticker is None  # nothing in flight: no timer keeps running


async def test_requests_made_together_are_written_together(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(serve(answer()))
    assert await get(pool, v) == (200, b"ok")  # one connection to start with
    results = await asyncio.gather(*(get(pool, v, f"/{i}") for i in range(20)))
    assert results == [(200, b"ok")] * 20
    assert sorted(r.lines[0] for r in v.requests[1:]) == sorted(f"GET /{i} HTTP/1.1" for i in range(20))
    assert pool._writes == []


async def test_total_covers_the_head_and_read_idle_the_body(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        request = await read_request(reader)
        assert request is not None
        if request.lines[0].startswith("GET /slow-head"):
            await asyncio.sleep(5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    v = await vendor(script)
    origin = pool.origin(endpoint(v))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Timeout):
        await origin.request("GET", "/slow-head", CIMultiDict(), timeout=Limits(total=0.2))
    response = await origin.request(
        "GET", "/slow-body", CIMultiDict(), timeout=Limits(total=0.2, read_idle=0.2)
    )
    with pytest.raises(Timeout, match=r"sent no more of its answer for 0\.2s"):
        await response.read()
    response.release()
    assert loop.time() - started < 2
    assert isinstance(Timeout("x"), TimeoutError)


async def test_pool_limit_bounds_connections_and_waiting_is_bounded_by_connect(
    vendor: Callable[[Script], Awaitable[Vendor]],
) -> None:
    gate = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        while (request := await read_request(reader)) is not None:
            v.requests.append(request)
            await gate.wait()
            writer.write(answer())
            await writer.drain()

    v = await vendor(script)
    p = Pool(limit=2)
    try:
        tasks = [asyncio.create_task(get(p, v)) for _ in range(6)]
        await asyncio.sleep(0.1)
        assert v.connections == 2
        with pytest.raises(Timeout, match=r"within 0\.1s"):
            await p.origin(endpoint(v)).request("GET", "/", CIMultiDict(), timeout=Limits(connect=0.1))
        gate.set()
        assert await asyncio.gather(*tasks) == [(200, b"ok")] * 6
        assert v.connections == 2
    finally:
        await p.close()


async def test_idle_connections_are_closed_after_keepalive(
    vendor: Callable[[Script], Awaitable[Vendor]],
) -> None:
    v = await vendor(serve(answer()))
    p = Pool(keepalive_seconds=0.0)
    try:
        assert await get(p, v) == (200, b"ok")
        origin = p.origin(endpoint(v))
        assert len(origin._idle) == 1
        p._sweep(asyncio.get_running_loop())
        assert origin._idle == []
        await asyncio.sleep(0.05)
        assert origin._size == 0
        assert await get(p, v) == (200, b"ok")
        assert v.connections == 2
    finally:
        await p.close()


# --------------------------------------------------------------------------- streaming


async def test_large_answer_is_read_with_backpressure(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    size = 20 * 1024 * 1024
    block = bytes(range(256)) * 256

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    v = await vendor(script)
    response = await pool.origin(endpoint(v)).request("GET", "/big", CIMultiDict(), timeout=Limits(total=30))
    digest = hashlib.sha256()
    received = 0
    most_buffered = 0
    async for chunk in response.iter_chunked(65536):
        assert len(chunk) <= 65536
        digest.update(chunk)
        received += len(chunk)
        most_buffered = max(most_buffered, response._size)
        if received < 2 * 1024 * 1024:
            await asyncio.sleep(0.001)  # a slow reader at first: the socket must stop being read
    response.release()
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(block * (size // len(block))).hexdigest()
    assert most_buffered <= HIGH_WATER + 512 * 1024  # one socket read past the high-water mark at most


async def test_streamed_upload_with_backpressure_and_early_errors(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    v = await vendor(serve(answer(b"got it")))
    origin = pool.origin(endpoint(v))
    payload = bytes(range(256)) * 4096 * 8  # 8 MB

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 1 << 20):
            yield payload[i : i + (1 << 20)]

    response = await origin.request("POST", "/up", CIMultiDict(), stream(), timeout=Limits(total=30))
    assert await response.read() == b"got it"
    response.release()
    assert hashlib.sha256(v.requests[-1].body).digest() == hashlib.sha256(payload).digest()

    class Broken(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"start"
        raise Broken("caller went away")

    with pytest.raises(BodyError, match="caller went away") as caught:
        await origin.request("POST", "/up", CIMultiDict(), broken(), timeout=LIMITS)
    assert isinstance(caught.value.__cause__, Broken)


async def test_released_unread_answer_closes_the_connection(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()

    v = await vendor(script)
    response = await pool.origin(endpoint(v)).request("GET", "/", CIMultiDict(), timeout=LIMITS)
    response.release()
    response.release()  # twice is fine
    with pytest.raises(Disconnected):
        await response.read()
    await asyncio.sleep(0.05)
    origin = pool.origin(endpoint(v))
    assert origin._idle == [] and origin._size == 0


async def test_close_ends_requests_in_flight(vendor: Callable[[Script], Awaitable[Vendor]]) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    v = await vendor(script)
    p = Pool()
    task = asyncio.create_task(get(p, v))
    await asyncio.sleep(0.1)
    await p.close()
    with pytest.raises(Disconnected):
        await task


async def test_cancelled_request_does_not_leak_its_connection(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        while (request := await read_request(reader)) is not None:
            if request.lines[0].startswith("GET /hang"):
                await asyncio.sleep(5)
            writer.write(answer())
            await writer.drain()

    v = await vendor(script)
    task = asyncio.create_task(get(pool, v, "/hang"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    origin = pool.origin(endpoint(v))
    assert origin._size == 0 and not origin._busy
    assert await get(pool, v) == (200, b"ok")


def test_module_exports_its_error_tree() -> None:
    for name in ("ConnectError", "Timeout", "Disconnected", "ProtocolError", "BodyError"):
        assert issubclass(getattr(pool_module, name), pool_module.PoolError)


async def test_a_body_that_keeps_flowing_outlasts_total(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    """Issue 10 (6): ``total`` bounds the wait for the head; a body still flowing is not cut by it."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):  # 1 s in all, one byte per 0.1 s: never idle for 0.5 s
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    v = await vendor(script)
    assert await get(pool, v, limits=Limits(total=0.3, read_idle=0.5)) == (200, b"x" * 10)


async def test_a_slow_reader_is_not_the_vendors_idleness(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    """While the socket is paused because the reader is behind, read_idle does not run."""
    size = 4 * HIGH_WATER

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"y" * size)
        await writer.drain()

    v = await vendor(script)
    response = await pool.origin(endpoint(v)).request(
        "GET", "/", CIMultiDict(), timeout=Limits(total=5, read_idle=0.2)
    )
    try:
        await asyncio.sleep(0.6)  # three idle periods with the socket paused at HIGH_WATER
        body = b"".join([chunk async for chunk in response.iter_chunked(65536)])
    finally:
        response.release()
    assert len(body) == size


@pytest.mark.parametrize("size", [HIGH_WATER + 1, 1_000_000])
async def test_read_whole_takes_an_answer_larger_than_high_water(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool, size: int
) -> None:
    """Issue 10 (2): ``read()`` used to wait for the end of a body whose socket it had paused."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, size, 50_000):
                part = b"z" * min(50_000, size - start)
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    v = await vendor(script)
    status, body = await get(pool, v, limits=Limits(total=5, read_idle=5))
    assert (status, len(body)) == (200, size)
    assert await get(pool, v, limits=Limits(total=5, read_idle=5)) == (200, b"z" * size)
    assert v.connections == 1  # read to its end: the connection was reused


async def test_read_whole_fails_at_once_on_a_reset_mid_body(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + b"a" * 600_000)
        await writer.drain()
        writer.transport.abort()

    v = await vendor(script)
    response = await pool.origin(endpoint(v)).request(
        "GET", "/", CIMultiDict(), timeout=Limits(total=30, read_idle=30)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Disconnected):
        await response.read()
    response.release()
    assert loop.time() - started < 10  # at once: not after a 30 s timeout


@pytest.mark.parametrize(
    "head",
    [
        b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)),  # ~130 KB in many small fields
        b"".join(b"X-H%d: v\r\n" % i for i in range(201)),  # few bytes, too many fields
        b"".join(b"X-%s: %s\r\n" % (b"n" * 4000, b"v" * 100) for i in range(17)),  # long names
    ],
    ids=["10000-fields", "201-fields", "long-names"],
)
async def test_an_oversized_head_is_a_protocol_error(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool, head: bytes
) -> None:
    """Issue 10 (9): the whole head counts (status line, names, values), and so does the field count."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    v = await vendor(script)
    with pytest.raises(ProtocolError, match=r"head of more than 65536 bytes|header fields, more than 200"):
        await get(pool, v)


async def test_two_hundred_fields_of_a_modest_head_pass(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(199))

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    v = await vendor(script)
    assert await get(pool, v) == (200, b"ok")


async def test_obs_text_in_a_header_value_is_kept_and_flagged(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        while await read_request(reader) is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n"
            )
            await writer.drain()

    v = await vendor(script)
    response = await pool.origin(endpoint(v)).request("GET", "/", CIMultiDict(), timeout=LIMITS)
    response.release()
    assert response.obs_text
    assert response.headers["X-Name"].encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert response.headers["X-Utf8"] == "caf\u00e9"


async def test_a_streamed_upload_does_not_spend_the_heads_deadline(
    vendor: Callable[[Script], Awaitable[Vendor]], pool: Pool
) -> None:
    """A caller uploading slowly is not the vendor failing to answer: ``total`` starts after the body."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v: Vendor) -> None:
        request = await read_request(reader)
        assert request is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(request.body), request.body))
        await writer.drain()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(5):
            await asyncio.sleep(0.15)  # 0.75 s in all, against a total of 0.3 s
            yield b"part"

    v = await vendor(script)
    response = await pool.origin(endpoint(v)).request(
        "POST", "/", CIMultiDict(), slow(), timeout=Limits(total=0.3, read_idle=0.3)
    )
    try:
        assert await response.read() == b"part" * 5
    finally:
        response.release()
