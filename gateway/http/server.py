"""The gateway's own HTTP/1.1 server: one asyncio Protocol per connection, parsed by httptools (llhttp,
the parser Node and aiohttp use), writing the gateway's ``Answer`` itself.

Why its own (bench/servers.py has the comparison): aiohttp's server cost ~45 µs per request more than a
lean one and bounds nothing by default; granian hands the app a percent-decoded path (byte-for-byte
forwarding is lost) and writes without backpressure. This server owns:

- the limits of ``[gateway]`` (docs/configuration.md, ``Limits``): the head within ``header_timeout``,
  no gap between body bytes over ``body_timeout``, idle keep-alive closed after ``keepalive_timeout``,
  the request target and the header fields bounded, at most ``max_connections`` at once (past it
  nothing is accepted, so callers wait in the kernel's backlog). Each refusal is a problem+json
  answer made here, handed to ``App.refused`` for its access record, and never echoes what was refused;
- HTTP/1.1 framing: keep-alive, pipelining (answers in order), chunked bodies both ways, HEAD, 1xx/204/
  304 without a body; llhttp refuses malformed heads and Content-Length/Transfer-Encoding conflicts
  (request smuggling): 400, then close;
- ``Expect: 100-continue``: the interim answer goes out when the pipeline first reads the body, that
  is after the route, the caller's key and the declared size passed; a refusal before that is the
  final answer, at once;
- backpressure both ways: reading pauses while a request body waits unread past ``BODY_HIGH_WATER``;
  writing waits while the caller's socket buffer is full; whole answers go out once the loop iteration
  that made them is over, all of them one after another (``HttpConnection.write_soon``);
- a caller that leaves: its request task is cancelled at once, unless the pipeline asked to finish it
  (``Request.finish_without_caller``: the idempotency stage), and a body being read raises
  ``ClientClosedRequest``;
- the drain: ``Server.shutdown`` stops accepting, closes idle connections, lets requests in flight
  finish (their answers say ``Connection: close``) until the deadline, then cancels them;
- HTTPS when ``Server.ssl`` is set (``[gateway] tls``, see ``http/tls.py``): each accepted connection's
  handshake runs in a task of its own, bounded by the head timeout, so a slow or broken handshake holds
  up nobody else; ``ssl`` may be replaced at any time (a reload) and only new connections see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy, istr

from ..config.model import GatewaySettings
from ..errors import (
    BadRequest,
    ClientClosedRequest,
    GatewayError,
    HeaderFieldsTooLarge,
    MethodNotImplemented,
    RequestTimeout,
    UriTooLong,
)
from ..messages import Answer, Request, problem_answer
from ..observability.logging import Logger, new_request_id
from ..upstream.pool import head_bytes
from .tls import client_subject

BODY_HIGH_WATER = 256 * 1024  # request-body bytes buffered unread before reading from the socket pauses
# Connection timers (head, keep-alive, linger) are deadlines the server checks this often, not a timer
# handle each: arming and cancelling two of those per request cost more than a sweep over every
# connection. A timeout fires within this much after it is due.
SWEEP_SECONDS = 0.1
LINGER_SECONDS = 2.0  # after an answer sent before its request's body was in: how long to read and drop
ACCEPT_PAUSE_SECONDS = 0.1  # how long accepting pauses when the process is out of file descriptors
_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset((204, 304))
# Looked up in every request or answer: istr skips folding the name per lookup.
_CONTENT_LENGTH, _TRANSFER_ENCODING = istr("Content-Length"), istr("Transfer-Encoding")
_EXPECT, _DATE = istr("Expect"), istr("Date")


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_url_bytes: int = 8192
    max_header_bytes: int = 32768
    max_connections: int = 10000

    @classmethod
    def of(cls, settings: GatewaySettings) -> Limits:
        return cls(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            keepalive_timeout=settings.keepalive_timeout_seconds,
            max_url_bytes=settings.max_url_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
        )


class StreamAborted(Exception):
    """An answer failed after its head was sent, by the vendor or (``caller``) by the caller leaving."""

    def __init__(self, message: str, *, caller: bool = False) -> None:
        super().__init__(message)
        self.caller = caller


class App(Protocol):
    """What the server serves: ``__call__`` answers one request (through ``request.respond``) and
    never raises but for cancellation (an ``async def``, or a plain one handing back the coroutine that
    does it); ``refused`` records a request the server refused itself."""

    def __call__(self, request: ServerRequest) -> Awaitable[None]: ...

    def refused(self, error: GatewayError, request_id: str, method: str, target: str) -> None: ...


class CallerBody:
    """A request's body as it arrives (``messages.BodySource``), with the body timeout between bytes."""

    __slots__ = ("_buffer", "_buffered", "_conn", "_error", "_waiter", "done", "expect_continue", "received")

    def __init__(self, conn: HttpConnection, expect_continue: bool) -> None:
        self._conn = conn
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: GatewayError | None = None
        self.done = False  # the whole body is in (the parser saw its end)
        self.expect_continue = expect_continue
        self.received = 0  # bytes handed to the reader

    # -- the parser's side
    def feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def end(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: GatewayError) -> None:
        if not self.done and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the pipeline's side
    async def _next(self) -> bytes | None:
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self.done:
                return None
            if self.expect_continue:
                self.expect_continue = False
                self._conn.write(_CONTINUE)
            self._conn.resume_reading()
            loop = self._conn.loop
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(self._conn.limits.body_timeout, self._timed_out)
            try:
                await waiter
            finally:
                timer.cancel()
        chunk = self._buffer.popleft()
        self._buffered -= len(chunk)
        if self._buffered <= BODY_HIGH_WATER // 2:
            self._conn.resume_reading()
        self.received += len(chunk)
        return chunk

    def _timed_out(self) -> None:
        seconds = self._conn.limits.body_timeout
        self.fail(RequestTimeout(f"no request body byte for {seconds:g}s after {self.received} bytes"))
        self._conn.must_close = True

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        while (chunk := await self._next()) is not None:
            for start in range(0, len(chunk), size):
                yield chunk[start : start + size]

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
        return b"".join(parts)


class ServerRequest:
    """One request as the connection parsed it; the app answers it with ``respond``."""

    __slots__ = (
        "_conn",
        "body",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "responded",
        "target",
        "version",
        "view",
    )

    def __init__(
        self,
        conn: HttpConnection,
        method: str,
        target: str,
        version: str,
        headers: CIMultiDictProxy[str],
        keep_alive: bool,
        content_length: int | None,
        body: CallerBody | None,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target  # the request-target as sent (percent-encoding kept)
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.body = body
        self.responded = False
        self.view: Request | None = None  # what as_request handed the pipeline

    @property
    def client_cert(self) -> frozenset[tuple[str, str]] | None:
        """The subject of the certificate the caller's connection presented (HTTPS with client CAs)."""
        return self._conn.client_cert

    def as_request(self) -> Request:
        """The gateway's own view of it, for the pipeline."""
        self.view = Request(
            method=self.method,
            headers=self.headers,
            content_length=self.content_length,
            source=self.body,
            client_cert=self._conn.client_cert,
        )
        return self.view

    def respond(self, answer: Answer) -> Awaitable[None]:
        """Write ``answer`` (await what this hands back); ``StreamAborted`` when it breaks off after its
        head was sent."""
        self.responded = True
        return self._conn.send(self, answer)


class HttpConnection(asyncio.Protocol):
    """One caller's connection: parses requests, runs them one at a time in order, writes answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.app = server.app
        self.limits = server.limits
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.must_close = False  # close after the answer in progress (drain, broken framing, timeout)
        self.requests: deque[ServerRequest] = deque()
        # The connection's task: runs the requests in ``requests`` and waits for the next between them.
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a request is queued or running (the task may still be waiting to run it)
        self._next: asyncio.Future[None] | None = None  # the idle task waits on it for the next request
        self._refusal: bytes | None = None  # written after the answer in progress (broken pipelined input)
        self._said_close = False  # the last answer's head said Connection: close (nothing may follow it)
        # The connection's one timer: ``on_deadline`` runs once loop time passes ``deadline`` (Server._sweep).
        self.deadline = 0.0
        self.on_deadline: Callable[[], None] | None = None
        self._current: ServerRequest | None = None  # the request whose body the parser is reading
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._fields: list[tuple[str, str]] = []
        self._field_bytes = 0
        self._in_head = False  # bytes of a request head came in, its end not yet
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._ignoring = False  # past a refusal or an answer to an unread body: what comes in is dropped
        self.client_cert: frozenset[tuple[str, str]] | None = None
        self._queued: bytes | None = None  # whole answers to write once this loop iteration is over

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.server.connections.add(self)
        self.client_cert = client_subject(transport.get_extra_info("peercert"))  # after the TLS handshake
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._disarm()
        for request in (self._current, *self.requests):
            if request is not None and request.body is not None:
                request.body.fail(
                    ClientClosedRequest("the caller closed the connection before its body was in")
                )
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("the caller closed the connection"))
        if self.task is not None and not self._finishing():
            self.task.cancel()  # the caller left: its request is abandoned (see the module docstring)
        self.server.connection_closed()

    def _finishing(self) -> bool:
        """Whether the request running asked to run to its end without its caller."""
        view = self.requests[0].view if self.busy and self.requests else None
        return view is not None and view.finish_without_caller

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._ignoring or self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserError as exc:
            # A limit a callback enforced (httptools wraps what a callback raises), or llhttp's own refusal.
            cause = exc.__context__
            if isinstance(cause, GatewayError):
                self._refuse(cause)
            else:
                self._refuse(BadRequest(f"the request is not valid HTTP/1.1 ({_parser_reason(exc)})"))

    def eof_received(self) -> bool | None:
        # The caller will send nothing more: a request it is still sending broke off.
        if self._current is not None and self._current.body is not None:
            self._current.body.fail(
                ClientClosedRequest("the caller closed the connection before its body was in")
            )
        if not self.busy:
            self.close()
        return None

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = []
        self._url_bytes = 0
        self._fields = []
        self._field_bytes = 0
        if not self.busy:
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_url_bytes:
            raise UriTooLong(f"the request target is longer than {self.limits.max_url_bytes} bytes")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._field_bytes += len(name) + len(value)
        if self._field_bytes > self.limits.max_header_bytes:
            raise HeaderFieldsTooLarge(
                f"the request's header fields are larger than {self.limits.max_header_bytes} bytes together"
            )
        # Values as aiohttp and the pool read them: UTF-8, with any other byte kept (surrogate escapes).
        self._fields.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if not self.busy:
            self._disarm()
        parser = self.parser
        method = parser.get_method().decode("ascii")
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        length_text = headers.get(_CONTENT_LENGTH)
        content_length = int(length_text) if length_text is not None else None  # llhttp checked it
        chunked = _TRANSFER_ENCODING in headers
        body = None
        if chunked or content_length:
            expect = headers.get(_EXPECT, "").lower() == "100-continue" and parser.get_http_version() == "1.1"
            body = CallerBody(self, expect)
        request = ServerRequest(
            self,
            method,
            b"".join(self._url).decode("latin-1"),
            parser.get_http_version(),
            headers,
            parser.should_keep_alive(),
            content_length,
            body,
        )
        self._current = request
        if method != "CONNECT":  # answered once llhttp reports the upgrade
            self.requests.append(request)
            self.busy = True
            if self.task is None:
                self.task = self.loop.create_task(self._run())
            elif (waiter := self._next) is not None and not waiter.done():
                waiter.set_result(None)

    def on_body(self, data: bytes) -> None:
        request = self._current
        if request is not None and request.body is not None:
            request.body.feed(data)

    def on_message_complete(self) -> None:
        request, self._current = self._current, None
        if request is not None and request.body is not None:
            request.body.end()

    # -- running requests
    async def _run(self) -> None:
        """The connection's requests, one at a time and in order; between two it waits for the next
        (one task per connection, not one per request: a task costs twice what a wake-up does)."""
        try:
            while not self.closed:
                if not self.requests:
                    self.busy = False
                    if not self._between_requests():
                        return
                    self._next = self.loop.create_future()
                    await self._next
                    continue
                request = self.requests[0]
                try:
                    await self.app(request)
                except Exception as exc:  # App promises never to raise; a broken promise is still answered
                    self.server.logger.exception("unhandled_error", exc)
                if self.requests and self.requests[0] is request:
                    self.requests.popleft()
                if not request.responded:
                    self.busy = False
                    self._refuse(GatewayError("the gateway failed unexpectedly; the error was logged"))
                    return
                if self._closing_after(request):
                    self._close_after_answer(request)
                    return
        finally:
            self.task = None
            self.busy = False
            self._next = None

    def _between_requests(self) -> bool:
        """Every request so far is answered: the timer until the next one; False if there is none."""
        if self.closed or self.must_close:
            return False
        if self._in_head:  # the next request's head is coming in (pipelined): its clock runs from now
            self._arm(self.limits.header_timeout, self._head_timed_out)
        elif self.server.draining:
            self.close()
            return False
        else:
            self._arm(self.limits.keepalive_timeout, self.close)
        return True

    def _closing_after(self, request: ServerRequest) -> bool:
        body_unread = request.body is not None and not request.body.done
        return self.must_close or self.server.draining or not request.keep_alive or body_unread

    def _close_after_answer(self, request: ServerRequest) -> None:
        if self._refusal is not None and not self._said_close:
            self.write(self._refusal)  # what came after this request was refused meanwhile
            self._linger()
        elif self._refusal is not None or (request.body is not None and not request.body.done):
            self._linger()  # answered before its body was in (a refusal), or garbage coming after it
        else:
            self.close()

    def _linger(self) -> None:
        """Close after the last answer, reading and dropping what the caller still sends for a moment,
        so it reads the answer instead of a reset (nginx's lingering close)."""
        if self.closed or self.transport is None:
            return
        self._ignoring = True
        self.resume_reading()
        self.flush()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_SECONDS, self.close)

    # -- writing
    def write(self, data: bytes) -> None:
        """Write now, after what ``write_soon`` still holds."""
        if not self.closed and self.transport is not None:
            if self._queued is not None:
                data, self._queued = self._queued + data, None
            self.transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Write once this loop iteration is over, with every connection's answers of the iteration
        (``Server.write_soon``): the sends then run one after another, not each between requests'
        Python, which cost more than the send itself. Order is kept: ``write``, ``close`` and a lingering
        close write what is held first."""
        if self.closed or self.transport is None:
            return
        if self._queued is not None:
            self._queued += data
            return
        self._queued = data
        self.server.write_soon(self)

    def flush(self) -> None:
        data, self._queued = self._queued, None
        if data is not None and not self.closed and self.transport is not None:
            self.transport.write(data)

    async def _drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("the caller closed the connection")
        if self._writable is not None and not self._writable.done():
            await self._writable

    def send(self, request: ServerRequest, answer: Answer) -> Awaitable[None]:
        """Write ``answer``: a whole one at once (what this hands back is done already), a stream by
        the coroutine it hands back. ValueError: a field holds CR or LF (nothing is written);
        StreamAborted: the caller left before it (a request that ran on without its caller)."""
        if self.closed:
            answer.discard()
            raise StreamAborted("the caller closed the connection before its answer", caller=True)
        closing = self._closing_after(request)
        head_only = request.method == "HEAD" or answer.status in _NO_BODY_STATUSES or answer.status < 200
        headers = answer.headers
        lines = [f"HTTP/1.1 {answer.status} {answer.reason or _reason(answer.status)}"]
        chunked = to_eof = False
        fields = list(headers.items())
        if _DATE not in headers:
            fields.append(("Date", self.server.date()))
        if head_only:
            pass  # a HEAD answer keeps the vendor's Content-Length; 204/304 have none to add
        elif answer.stream is None:
            if _CONTENT_LENGTH in headers:
                fields = [(n, v) for n, v in fields if n.lower() != "content-length"]
            fields.append(("Content-Length", str(len(answer.body or b""))))
        elif _CONTENT_LENGTH not in headers:
            if request.version == "1.1":
                chunked = True
                fields.append(("Transfer-Encoding", "chunked"))
            else:
                closing = to_eof = True  # an HTTP/1.0 caller reads to the end of the connection
        # Broken input behind this request: its refusal follows this answer and carries the close
        # (as nginx answers a request, then the garbage after it), unless this one must say it.
        refusal_next = self._refusal is not None and request.keep_alive and not self.server.draining
        self._said_close = closing and (to_eof or not refusal_next)
        if closing:
            self.must_close = True
        if self._said_close:
            fields.append(("Connection", "close"))
        elif request.version == "1.0":
            fields.append(("Connection", "keep-alive"))
        lines.extend(map(": ".join, fields))
        try:
            head = head_bytes(lines)
        except ValueError:
            answer.discard()
            raise
        if head_only or answer.stream is None:
            answer.discard()
            self.write_soon(head if head_only or not answer.body else head + answer.body)
            return self.server.done
        return self._stream(head, answer.stream, chunked, answer)

    async def _stream(self, head: bytes, stream: AsyncIterator[bytes], chunked: bool, answer: Answer) -> None:
        try:
            self.write(head)
            try:
                async for chunk in stream:
                    if not chunk:
                        continue
                    self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await self._drain()
            except GatewayError as exc:
                # The status line is gone already: all the caller can be told is a broken connection.
                self.close()
                raise StreamAborted(exc.detail) from None
            if chunked:
                self.write(b"0\r\n\r\n")
            await self._drain()
        except ConnectionError as exc:
            raise StreamAborted(
                f"the caller closed the connection during the answer: {type(exc).__name__}", caller=True
            ) from None
        finally:
            answer.discard()

    # -- refusals, timers, closing
    def _refuse(self, error: GatewayError) -> None:
        """Answer ``error`` for a request the server cannot hand to the app, then close."""
        self._disarm()
        self.must_close = True
        self._ignoring = True  # the parser's state is lost: nothing after this is a request
        current = self._current
        if current is not None and current.body is not None:
            current.body.fail(error)
            if self.busy and self.requests and self.requests[0] is current:
                # The request being answered is the one whose body broke: the app reads the error from
                # its body and answers it (with its own access record); nothing more follows but the close.
                return
        request_id = new_request_id()
        method = ""
        with contextlib.suppress(httptools.HttpParserError, UnicodeDecodeError):
            method = self.parser.get_method().decode("ascii")
        self.app.refused(error, request_id, method, b"".join(self._url).decode("latin-1")[:200])
        if not self.busy and not self.closed:
            self.write(_problem_head(error, request_id, self.server.date()))
            self._linger()
        elif self.busy:
            # The first request (in progress, or next) is answered, then this refusal, then the close.
            while len(self.requests) > 1:
                self.requests.pop()
            self._refusal = _problem_head(error, request_id, self.server.date())

    def _upgrade(self) -> None:
        request, self._current = self._current, None
        if self.parser.get_method() == b"CONNECT":
            self._refuse(MethodNotImplemented("CONNECT is not served: the gateway is not a forward proxy"))
            return
        # Another protocol asked for (Upgrade: websocket, h2c): served as plain HTTP/1.1, then closed.
        self.must_close = True
        if request is not None and request.body is not None:
            request.body.end()

    def _head_timed_out(self) -> None:
        if not self._in_head and not self.busy:
            self.close()  # nothing of a request came in: an idle new connection, closed quietly
            return
        self._refuse(
            RequestTimeout(f"the request head was not complete within {self.limits.header_timeout:g}s")
        )

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self.deadline = self.loop.time() + seconds
        self.on_deadline = callback
        self.server.watch()

    def _disarm(self) -> None:
        self.on_deadline = None

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self._disarm()
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def idle(self) -> bool:
        return not self.busy and not self._in_head


class Server:
    """Accepts connections on its listening sockets (up to ``max_connections``) and runs ``app``."""

    def __init__(self, app: App, limits: Limits, logger: Logger) -> None:
        self.app = app
        self.limits = limits
        self.logger = logger
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self.refused = 0  # connections the kernel handed over that could not be taken (no descriptors)
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        # HTTPS: the context new connections get (``listen`` sets it; a reload may replace it).
        self.ssl: ssl.SSLContext | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._date = ""
        self._date_second = 0
        self._writes: list[HttpConnection] = []  # connections holding answers to write (write_soon)
        # What HttpConnection.send hands back for an answer it wrote whole: awaiting it costs nothing.
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.done.set_result(None)
        self._sweeper: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """A connection armed its timer: make sure the sweep runs."""
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Run the callback of every connection whose deadline passed; again while any is armed."""
        self._sweeper = None
        now = self.loop.time()
        armed = False
        for conn in list(self.connections):
            callback = conn.on_deadline
            if callback is None:
                continue
            if conn.deadline <= now:
                conn.on_deadline = None
                try:
                    callback()
                except Exception as exc:  # one connection's failure must not stop the others' timers
                    self.logger.exception("unhandled_error", exc)
            armed = armed or conn.on_deadline is not None
        if armed:
            self.watch()

    def write_soon(self, conn: HttpConnection) -> None:
        """``conn.flush()`` once this loop iteration is over (see ``HttpConnection.write_soon``)."""
        pending = self._writes
        pending.append(conn)
        if len(pending) == 1:
            self.loop.call_soon(self._flush_writes)

    def _flush_writes(self) -> None:
        pending, self._writes = self._writes, []
        for conn in pending:
            conn.flush()

    def date(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True)
        return self._date

    async def listen(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
        ssl: ssl.SSLContext | None = None,
    ) -> int:
        """Bind and start accepting (HTTPS with ``ssl``); returns the port (useful with port 0)."""
        if ssl is not None:
            self.ssl = ssl
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sockets.append(sock)
        self._acceptors.append(self.loop.create_task(self._accept(sock)))
        return int(sock.getsockname()[1])

    async def _accept(self, sock: socket.socket) -> None:
        loop = self.loop
        while True:
            while len(self.connections) >= self.limits.max_connections:
                self._room.clear()
                await self._room.wait()  # the kernel keeps new connections in its backlog meanwhile
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRORS:
                    raise
                self.refused += 1
                self.logger.event("connection_refused", level="error", error=exc.strerror or str(exc))
                await asyncio.sleep(ACCEPT_PAUSE_SECONDS)
                continue
            protocol = HttpConnection(self)
            self.connections.add(protocol)  # counted at once: the limit holds before the transport exists
            if self.ssl is not None:
                task = loop.create_task(self._handshake(protocol, conn, self.ssl))
                self._handshakes.add(task)
                task.add_done_callback(self._handshakes.discard)
                continue
            try:
                await loop.connect_accepted_socket(lambda p=protocol: p, conn)  # type: ignore[misc]
            except OSError:
                self.connections.discard(protocol)
                conn.close()

    async def _handshake(
        self, protocol: HttpConnection, conn: socket.socket, context: ssl.SSLContext
    ) -> None:
        """One HTTPS connection's TLS handshake; the protocol sees the connection once it is done."""
        try:
            await self.loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=context, ssl_handshake_timeout=self.limits.header_timeout
            )
        except BaseException as exc:
            # No connection_made, so no connection_lost either: it is uncounted here.
            self.connections.discard(protocol)
            conn.close()
            self.connection_closed()
            if not isinstance(exc, Exception):
                raise  # cancelled by the drain
            self.logger.event("tls_handshake_failed", level="info", error=_tls_reason(exc))

    def connection_closed(self) -> None:
        if len(self.connections) < self.limits.max_connections:
            self._room.set()

    def stop_accepting(self) -> None:
        for task in (*self._acceptors, *self._handshakes):
            task.cancel()
        for sock in self._sockets:
            sock.close()
        self._acceptors, self._sockets = [], []

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, close idle connections, let requests in flight finish until ``deadline``
        (loop time), then cancel what still runs and close every connection."""
        self.draining = True
        self.stop_accepting()
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        while any(conn.busy for conn in self.connections):
            if self.loop.time() >= deadline:
                break
            await asyncio.sleep(min(0.05, max(0.0, deadline - self.loop.time())))
        running = [conn.task for conn in self.connections if conn.busy and conn.task is not None]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _problem_head(error: GatewayError, request_id: str, date: str) -> bytes:
    answer = problem_answer(error, request_id)
    body = answer.body or b""
    lines = [f"HTTP/1.1 {error.status} {_reason(error.status)}"]
    lines.extend(map(": ".join, answer.headers.items()))
    lines += [f"Date: {date}", f"Content-Length: {len(body)}", "Connection: close"]
    return head_bytes(lines) + body


def _tls_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)  # "PEER_DID_NOT_RETURN_A_CERTIFICATE", "HTTP_REQUEST", ...
    text = str(exc)
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def _parser_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:120]


_REASONS: dict[int, str] = {}


def _reason(status: int) -> str:
    reason = _REASONS.get(status)
    if reason is None:
        from http import HTTPStatus

        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        if status == 499:
            reason = "Client Closed Request"
        _REASONS[status] = reason
    return reason
