"""The vendor client: per-origin keep-alive pools of asyncio Protocol connections speaking HTTP/1.1.

Why not aiohttp's ``ClientSession``: on a pass-through request it was about 60% of the gateway's CPU
(bench/README.md). Here a request is one serialised header block (one ``str.join``, one ``encode``), one
``transport.write`` and a response parsed by ``httptools`` (llhttp, in C) straight from the socket.

Invariants:
- A connection carries one exchange at a time (no pipelining). It goes back to its origin's idle stack
  only when the answer was read to its end, the request body was sent whole, the vendor did not say
  ``Connection: close`` (nor answered HTTP/1.0 without keep-alive) and nothing failed; else it is closed.
- An idle connection the vendor closes leaves the stack as soon as the loop sees it (``connection_lost``);
  any byte arriving on an idle connection closes it. A request that still meets a dead reused connection
  (the close crossed our request on the wire) is sent once more on a fresh connection, only when no byte
  of an answer came back and resending cannot do harm: an idempotent method (or the caller says so) and
  a body we still hold (bytes, not a stream).
- The answer's body is buffered up to ``HIGH_WATER`` bytes; past that the socket is not read until the
  reader catches up, so however large an answer is, it is never held whole unless the reader asks
  (``read()`` takes what is buffered as it goes, so reading a large answer whole never stalls).
- Each request has one deadline for its answer's head (``timeout.total``, from the moment it is sent to
  the pool, or for a streamed body from the moment its last byte was sent: a slow uploader is the
  caller's problem, not the vendor's). Once the head is in, the body is bounded by ``timeout.read_idle``
  between bytes, not counting time the socket is paused because the reader is slow; a streamed request
  body waits at most that long for the vendor to take more. Past a deadline the connection is closed and
  whoever waits on it gets ``Timeout``. Deadlines are checked every ``DEADLINE_TICK`` (one ticker for the
  pool, not a timer per request), so one fires up to that much late. Getting a connection (waiting for a
  free slot, DNS, TCP, TLS) is also bounded by ``timeout.connect``.
- An answer's head is bounded as a whole: status line, names and values together at most
  ``max_head_bytes``, at most ``max_head_fields`` fields; past either it is a ``ProtocolError``.
- Requests whose body is bytes (or none) are written when the loop iteration that made them ends, all
  together, in order; a streamed body starts at once.
- Failures are this module's own exceptions (``PoolError`` and its subclasses); the forwarder turns them
  into HTTP problems in one place. An exception raised by the caller's body iterator is wrapped in
  ``BodyError`` with the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, istr

# RFC 9110 section 9.2.2.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Without a body these send no framing; every other method sends ``Content-Length: 0`` (as aiohttp did).
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Response body buffering per connection: stop reading the socket above HIGH_WATER, resume at LOW_WATER.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
DEFAULT_LIMIT = 1024  # connections per origin, idle and busy together
DEFAULT_KEEPALIVE_SECONDS = 30.0  # an idle connection is closed after this long
_SWEEP_SECONDS = 5.0
DEADLINE_TICK = 0.025  # how often deadlines are checked: one may pass by up to this much
MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer, together
MAX_HEAD_FIELDS = 200  # header fields in one answer
_ENCODING = "utf-8"
# Header bytes the caller or vendor sent that are not UTF-8 travel unchanged (as aiohttp's parser keeps
# them): decoded with surrogateescape, encoded back the same way.
_ERRORS = "surrogateescape"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Looked up in every request or answer: istr skips folding the name per lookup.
_CONTENT_LENGTH, _TRANSFER_ENCODING = istr("Content-Length"), istr("Transfer-Encoding")
_USER_AGENT = istr("User-Agent")


class PoolError(Exception):
    """Base of everything this module raises about a vendor exchange."""


class ConnectError(PoolError):
    """No connection could be made (DNS, TCP or TLS, certificate verification included)."""


class Timeout(PoolError, TimeoutError):
    """The request's deadline, or its connect timeout, passed."""


class Disconnected(PoolError):
    """The vendor closed or reset the connection before the answer was complete."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # whether any byte of an answer had arrived


class ProtocolError(PoolError):
    """The vendor's answer is not valid HTTP/1.1."""


class BodyError(PoolError):
    """Reading the caller's request body failed; the original exception is ``__cause__``."""


class Timeouts(NamedTuple):
    """One request's timeouts, in seconds (None: no limit): ``total`` up to the answer's head,
    ``connect`` for getting a connection, ``read_idle`` between body bytes (and for the vendor to take
    more of a streamed request body)."""

    total: float | None = None
    connect: float | None = None
    read_idle: float | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a vendor lives: built once per vendor at load; requests to equal endpoints share a pool."""

    scheme: str  # "http" or "https"
    host: str  # as resolved and verified: IDNA-encoded, IPv6 without brackets
    port: int
    host_header: str  # the Host field: host[:port], port only when not the scheme's default
    # https only: True verifies against the system CAs, False does not verify, or a context of its own.
    ssl: ssl.SSLContext | bool = True


class VendorRequest(NamedTuple):
    """One request to send: where, what, and whether a resend after a stale connection is safe."""

    endpoint: Endpoint
    method: str
    target: str  # origin-form, sent as is
    headers: CIMultiDict[str]  # no framing or connection fields (see Origin.request)
    body: bytes | AsyncIterable[bytes] | None = None
    idempotent: bool | None = None  # None: as the method says


class Transport(Protocol):
    """The one seam between the gateway and the network: every vendor call (OAuth2 token calls too)
    goes through ``send``; its failures are ``PoolError``s. ``Pool`` is the implementation."""

    def send(self, request: VendorRequest, timeout: Timeouts) -> Awaitable[Response]: ...


class Pool:
    """Every origin's pool; one per app, created before and closed after serving (cleanup_ctx)."""

    def __init__(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
        user_agent: str | None = None,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_head_fields: int = MAX_HEAD_FIELDS,
    ) -> None:
        self.limit = limit
        self.max_head_bytes = max_head_bytes
        self.max_head_fields = max_head_fields
        self.keepalive_seconds = keepalive_seconds
        # Sent when the caller sent no User-Agent of its own.
        self.user_agent = user_agent
        self._origins: dict[Endpoint, Origin] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._writes: list[tuple[asyncio.Transport, bytes]] = []  # see _write_soon
        self._closed = False
        self._verified: ssl.SSLContext | None = None
        self._unverified: ssl.SSLContext | None = None

    def origin(self, endpoint: Endpoint) -> Origin:
        """The pool for one endpoint (kept across config reloads while the endpoint is unchanged)."""
        origin = self._origins.get(endpoint)
        if origin is None:
            origin = self._origins[endpoint] = Origin(self, endpoint, self._ssl_context(endpoint))
        return origin

    def send(self, request: VendorRequest, timeout: Timeouts) -> Awaitable[Response]:
        """``Transport.send``: the request through its endpoint's pool of connections (the origin's
        own coroutine, not one wrapped in another)."""
        origin = self._origins.get(request.endpoint) or self.origin(request.endpoint)
        return origin.request(
            request.method,
            request.target,
            request.headers,
            request.body,
            timeout=timeout,
            idempotent=request.idempotent,
        )

    def _ssl_context(self, endpoint: Endpoint) -> ssl.SSLContext | None:
        if endpoint.scheme != "https":
            return None
        if isinstance(endpoint.ssl, ssl.SSLContext):
            return endpoint.ssl
        if endpoint.ssl:
            if self._verified is None:
                self._verified = ssl.create_default_context()
                self._verified.minimum_version = ssl.TLSVersion.TLSv1_2  # docs/configuration.md: never older
                self._verified.set_alpn_protocols(("http/1.1",))
            return self._verified
        if self._unverified is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(("http/1.1",))
            self._unverified = context
        return self._unverified

    def _write_soon(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, data: bytes) -> None:
        """Requests are written together once the loop iteration that made them is done: one burst of
        sends wakes a vendor once, instead of once per request (on loopback or a VM each wake-up costs
        more than the send). Order per connection is kept: one list, written first to last."""
        pending = self._writes
        pending.append((transport, data))
        if len(pending) == 1:
            loop.call_soon(self._flush_writes)

    def _flush_writes(self) -> None:
        pending, self._writes = self._writes, []
        for transport, data in pending:
            if not transport.is_closing():  # closed meanwhile: its exchange fails on connection_lost
                transport.write(data)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deadlines are checked every DEADLINE_TICK while any exchange has one: a timer per request
        (uvloop: a libuv timer started and stopped) cost more than the whole check."""
        if self._ticker is None and not self._closed:
            self._ticker = loop.call_later(DEADLINE_TICK, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ticker = None
        now = loop.time()
        pending = False
        for origin in self._origins.values():
            if not origin._busy:
                continue
            for conn in [conn for conn in origin._busy if conn.deadline]:
                if conn.deadline <= now:
                    conn._expire()
                elif conn._state != _DONE:
                    pending = True
        if pending:
            self._watch(loop)

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = loop.call_later(_SWEEP_SECONDS, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        horizon = loop.time() - self.keepalive_seconds
        again = False
        for origin in self._origins.values():
            origin._close_idle(horizon)
            if origin._idle:
                again = True
        if again:
            self._schedule_sweep(loop)

    async def close(self) -> None:
        """Close every connection; requests still running fail with Disconnected."""
        self._closed = True
        for handle in (self._sweeper, self._ticker):
            if handle is not None:
                handle.cancel()
        self._sweeper = self._ticker = None
        for origin in self._origins.values():
            origin._close_all()
        self._origins.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost callbacks


class Origin:
    """Keep-alive connections to one endpoint: an idle stack (most recently used on top) and a size limit."""

    def __init__(self, pool: Pool, endpoint: Endpoint, context: ssl.SSLContext | None) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self._ssl = context
        self._limit = pool.limit
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._size = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        host = endpoint.host_header
        self._host_line = f"Host: {host}"
        self._ua_line = f"User-Agent: {pool.user_agent}" if pool.user_agent else None
        self._where = f"{endpoint.host}:{endpoint.port}"
        self._loop: asyncio.AbstractEventLoop | None = None  # see request()

    def __repr__(self) -> str:
        endpoint = self.endpoint
        return f"<Origin {endpoint.scheme}://{endpoint.host_header} idle={len(self._idle)} size={self._size}>"

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        # Not an asyncio.timeout(): the deadline also bounds reading the body, after this returns.
        timeout: Timeouts,  # noqa: ASYNC109
        idempotent: bool | None = None,
    ) -> Response:
        """Send one request; the answer's status and headers are in, its body is read from the Response.

        ``target`` is the origin-form request target, sent as is. ``headers`` must hold no framing or
        connection fields: ``Host``, ``Content-Length`` (except to announce a streamed body's length)
        and ``Transfer-Encoding`` are the pool's. A streamed body without ``Content-Length`` is sent
        chunked. ``idempotent`` overrides the method's idempotency for the one stale-connection retry.
        The caller must ``release()`` the Response.
        """
        # The loop this origin runs on, asked for once: Python 3.11's get_running_loop() makes a
        # getpid() system call each time.
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if timeout.total is None else loop.time() + timeout.total
        streamed = body is not None and not isinstance(body, bytes)
        chunked = streamed and _CONTENT_LENGTH not in headers
        head = self._head(method, target, headers, body, streamed, chunked)
        retry = not streamed and (method in IDEMPOTENT_METHODS if idempotent is None else idempotent)
        fresh_only = False
        while True:
            conn: Connection | None = None
            idle = self._idle
            while idle and not fresh_only:
                candidate = idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
            reused = conn is not None
            if conn is None:
                conn = await self._connect(loop, deadline, timeout.connect)
            self._busy.add(conn)
            waiter = conn.send(loop, method, head, body, chunked, deadline, timeout)
            try:
                return await waiter
            except BaseException as exc:
                # Nobody will read this exchange's answer: the connection cannot be reused.
                conn.abandon()
                if isinstance(exc, Disconnected) and reused and retry and not exc.answered:
                    fresh_only = True  # the vendor closed it as we sent: nothing can have been processed
                    continue
                raise

    def _head(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
        streamed: bool,
        chunked: bool,
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", self._host_line]
        lines.extend(map(": ".join, headers.items()))
        if self._ua_line is not None and _USER_AGENT not in headers:
            lines.append(self._ua_line)
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif not streamed and method not in _NO_BODY_METHODS:
            lines.append("Content-Length: 0")
        return head_bytes(lines)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, deadline: float | None, connect: float | None
    ) -> Connection:
        limit = connect
        if deadline is not None:
            left = deadline - loop.time()
            limit = left if limit is None else min(limit, left)
        try:
            async with asyncio.timeout(limit):
                while self._size >= self._limit:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done() or waiter.cancelled():
                            self._drop_waiter(waiter)
                    idle = self._idle
                    while idle:
                        conn = idle.pop()
                        if not conn.closed:
                            return conn
                self._size += 1
                try:
                    endpoint = self.endpoint
                    _, conn = await loop.create_connection(
                        lambda: Connection(self),
                        endpoint.host,
                        endpoint.port,
                        ssl=self._ssl,
                        server_hostname=endpoint.host if self._ssl is not None else None,
                    )
                except BaseException:
                    self._size -= 1
                    self._wake()
                    raise
        except TimeoutError as exc:
            if limit is None or exc.errno is not None:  # the OS gave up (ETIMEDOUT), not our timeout
                raise ConnectError(f"cannot connect to {self._where} ({_describe(exc)})") from None
            raise Timeout(f"cannot connect to {self._where} within {max(limit, 0):g}s") from None
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to {self._where} ({exc.strerror or _describe(exc)})"
            ) from None
        return conn

    def _drop_waiter(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            # It was woken and then timed out or was cancelled: pass the wake-up on.
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _put(self, conn: Connection) -> None:
        """A connection whose exchange ended cleanly: back on the idle stack."""
        self._busy.discard(conn)
        if self.pool._closed:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)
        self.pool._schedule_sweep(conn.loop)
        if self._waiters:
            self._wake()

    def _lost(self, conn: Connection) -> None:
        """connection_lost: the connection no longer counts, wherever it was."""
        self._size -= 1
        self._busy.discard(conn)
        if conn.idle_since:
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
        if self._waiters:
            self._wake()

    def _close_idle(self, horizon: float) -> None:
        idle = self._idle
        while idle and idle[0].idle_since <= horizon:  # the bottom of the stack is the oldest
            idle.pop(0).close()

    def _close_all(self) -> None:
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()


class _SkipBody(Exception):
    """Raised from on_headers_complete to stop llhttp after the head of an answer to HEAD."""


# Per-exchange states of a Connection.
_IDLE, _WAITING, _BODY, _DONE = range(4)


class Connection(asyncio.Protocol):
    """One keep-alive connection to an origin; the parser's callbacks fill the current Response."""

    __slots__ = (
        "_body_sent",
        "_chunked",
        "_drain",
        "_failed",
        "_got_bytes",
        "_head_bytes",
        "_head_request",
        "_headers",
        "_idle_seconds",
        "_informational",
        "_keep_alive",
        "_paused",
        "_reason",
        "_response",
        "_state",
        "_total_seconds",
        "_until_eof",
        "_waiter",
        "_where",
        "_write_paused",
        "_writer",
        "closed",
        "deadline",
        "idle_since",
        "loop",
        "origin",
        "parser",
        "transport",
    )

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = _parser(self)
        self.closed = False
        self.idle_since = 0.0  # loop time it went idle; 0 while in use
        self._state = _IDLE
        self._where = origin._where
        self._response: Response | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self.deadline = 0.0  # loop time the current exchange must be over by; 0: none
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = ""
        self._head_request = False
        self._informational = False
        self._until_eof = False
        self._chunked = False
        self._keep_alive = False
        self._failed: BaseException | None = None
        self._got_bytes = False
        self._head_bytes = 0
        self._idle_seconds: float | None = None
        self._total_seconds: float | None = None
        self._paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._body_sent = True

    # ------------------------------------------------------------------ one exchange

    def send(
        self,
        loop: asyncio.AbstractEventLoop,
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        chunked: bool,
        deadline: float | None,
        timeout: Timeouts,
    ) -> asyncio.Future[Response]:
        """Start one exchange; the future gets the Response once its head is in (or the error)."""
        self.idle_since = 0.0
        self._state = _WAITING
        self._response = None
        self._headers = []
        self._reason = ""
        self._head_request = method == "HEAD"
        self._informational = False
        self._until_eof = False
        self._keep_alive = False
        self._failed = None
        self._got_bytes = False
        self._head_bytes = 0
        self._idle_seconds = timeout.read_idle
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        streamed = body is not None and not isinstance(body, bytes)
        # A streamed body's time is the caller's: the head's deadline starts once its last byte is sent.
        self._total_seconds = timeout.total if streamed else None
        if deadline is not None and not streamed:
            self.deadline = deadline
            self.origin.pool._watch(loop)
        else:
            self.deadline = 0.0
        transport = self.transport
        if body is None:
            self.origin.pool._write_soon(loop, transport, head)
        elif isinstance(body, bytes):
            self.origin.pool._write_soon(loop, transport, head + body)
        else:
            transport.write(head)
            self._chunked = chunked
            self._body_sent = False
            self._writer = loop.create_task(self._send_body(body))
            self._writer.add_done_callback(self._body_done)
        return waiter

    def abandon(self) -> None:
        self._waiter = None
        self._stop()

    async def _send_body(self, body: AsyncIterable[bytes]) -> None:
        chunked = self._chunked
        transport = self.transport
        chunks = aiter(body)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise BodyError(f"reading the request body failed: {_describe(exc)}") from exc
            if self.closed or self._failed is not None:
                return
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if self._write_paused:
                drain = self._drain = self.loop.create_future()
                try:
                    async with asyncio.timeout(self._idle_seconds):
                        await drain
                except TimeoutError:
                    raise Timeout(
                        f"{self._where} took no more of the request body for {self._idle_seconds:g}s"
                    ) from None
        if chunked and not self.closed:
            transport.write(b"0\r\n\r\n")
        self._body_sent = True
        total = self._total_seconds
        if total is not None and self._state == _WAITING:
            self.deadline = self.loop.time() + total
            self.origin.pool._watch(self.loop)

    def _body_done(self, task: asyncio.Task[None]) -> None:
        self._writer = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc if isinstance(exc, PoolError) else BodyError(str(exc)))

    def _expire(self) -> None:
        if self._state == _WAITING:
            self._fail(Timeout(f"{self._where} did not answer in time"))
        elif self._state == _BODY:
            self._fail(Timeout(f"{self._where} sent no more of its answer for {self._idle_seconds:g}s"))

    def _fail(self, exc: PoolError) -> None:
        """The exchange cannot finish: tell whoever waits, and close the connection."""
        if self._failed is not None or self._state in (_IDLE, _DONE):
            return
        self._failed = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        response = self._response
        if response is not None:
            response._fail(exc)
        self._stop()

    def _stop(self) -> None:
        """Abandon the exchange and the connection."""
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
        self._state = _DONE
        self._keep_alive = False
        self.origin._busy.discard(self)
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def release(self) -> None:
        """The Response is done with: reuse the connection if its exchange ended cleanly, else close it."""
        clean = (
            self._state == _DONE
            and self._keep_alive
            and self._body_sent
            and self._failed is None
            and not self.closed
        )
        self._response = None
        self._waiter = None
        if clean:
            self._state = _IDLE
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
            self.origin._put(self)
        else:
            self._stop()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state != _WAITING and state != _BODY:
            # Nothing was asked: a vendor talking out of turn (a 408 before closing, say) is not reused.
            self._keep_alive = False
            self.close()
            return
        self._got_bytes = True
        if state == _WAITING:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _SkipBody):
                # The head of an answer to HEAD is all of it. llhttp stopped in an error state: a fresh
                # parser for the next exchange, unless more than the head came in this read.
                self.parser = _parser(self)
                if not data.endswith(b"\r\n\r\n"):
                    self._keep_alive = False
                return
            cause = exc.__context__
            if isinstance(cause, PoolError):
                self._fail(cause)
            else:
                self._fail(ProtocolError(f"{self._where} sent an invalid answer: {cause or exc}"))
        except HttpParserUpgrade:
            self._fail(ProtocolError(f"{self._where} switched protocols, which the gateway does not do"))
        except HttpParserError as exc:
            self._fail(ProtocolError(f"{self._where} sent an invalid answer: {exc}"))
        else:
            limit = self.origin.pool.max_head_bytes
            if self._state == _WAITING and self._head_bytes > limit:
                # llhttp keeps what it has of a head in memory: a vendor cannot make that grow unbounded.
                self._fail(ProtocolError(f"{self._where} sent a head of more than {limit} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._state in (_WAITING, _BODY) and self._failed is None:
            if self._state == _BODY and self._until_eof and exc is None:
                self._state = _DONE  # an answer without length ends with the connection
                if self._response is not None:
                    self._response._finish()
            else:
                answered = self._got_bytes
                if self._state == _WAITING:
                    message = "the connection was closed before an answer"
                else:
                    message = "the connection was closed in the middle of the answer"
                if exc is not None:
                    message += f" ({_describe(exc)})"
                self._fail(Disconnected(message, answered=answered))
        self.origin._lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    # ------------------------------------------------------------------ httptools callbacks

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode(_ENCODING, _ERRORS)

    def on_message_begin(self) -> None:
        if self._state != _WAITING:
            # More than one answer to one request: finish this one, but never reuse the connection.
            self._keep_alive = False
            self.close()
            raise ProtocolError(f"{self._where} sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))  # decoded all at once in on_headers_complete

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: not the answer. Its end comes through on_message_complete.
            self._informational = True
            self._headers = []
            self._reason = ""
            return
        if status == 101:
            raise ProtocolError(f"{self._where} switched protocols, which the gateway does not do")
        raw = self._headers
        pool = self.origin.pool
        if len(raw) > pool.max_head_fields:
            raise ProtocolError(
                f"{self._where} sent {len(raw)} header fields, more than {pool.max_head_fields}"
            )
        values = b"".join([value for _, value in raw])
        # "HTTP/1.1 200 " and CRLF, each field's ": " and CRLF, and the empty line.
        size = len(values) + sum([len(name) for name, _ in raw]) + 4 * len(raw) + len(self._reason) + 17
        if size > pool.max_head_bytes:
            raise ProtocolError(f"{self._where} sent a head of more than {pool.max_head_bytes} bytes")
        # No control character but HTAB in the reason (llhttp refuses them in values: see _parser);
        # values lose trailing whitespace, as aiohttp's parser has them.
        reason = self._reason
        if not reason.isprintable() and _CONTROL.search(reason):
            raise ProtocolError(f"{self._where} sent a reason phrase with a control character")
        headers = CIMultiDict(
            [
                (name.decode(_ENCODING, _ERRORS), value.rstrip(b" \t").decode(_ENCODING, _ERRORS))
                for name, value in raw
            ]
        )
        length: int | None = None
        chunked = False
        if (value := headers.get(_CONTENT_LENGTH)) is not None:
            length = int(value)  # llhttp has checked it is one decimal number
        elif (coding := headers.get(_TRANSFER_ENCODING)) is not None:
            chunked = "chunked" in coding.lower()
        # Handed over as parsed (the forwarder edits it into the caller's answer in place, no copy).
        response = Response(self, status, self._reason, headers, length)
        if not values.isascii() or not self._reason.isascii():
            response.obs_text = _obs_text(raw, self._reason)
        self._response = response
        self._state = _BODY
        idle = self._idle_seconds
        # From here on the body is bounded between bytes, no longer by the head's deadline.
        if idle is not None:
            self.deadline = self.loop.time() + idle
            self.origin.pool._watch(self.loop)
        else:
            self.deadline = 0.0
        bodiless = self._head_request or status in (204, 304)
        self._until_eof = not bodiless and length is None and not chunked
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self._head_request:
            self._keep_alive = parser.should_keep_alive()
            self._complete()
            raise _SkipBody

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None:
            return
        chunks = response._chunks
        chunks.append(body)
        response._size += len(body)
        if response._size >= HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
            self.deadline = 0.0  # not read because the reader is slow: not the vendor's delay
        elif (idle := self._idle_seconds) is not None:
            self.deadline = self.loop.time() + idle
        waiter = response._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._keep_alive = self.parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        self._state = _DONE
        if self._response is not None:
            self._response._finish()

    def _resume(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()
            if self._state == _BODY and (idle := self._idle_seconds) is not None:
                self.deadline = self.loop.time() + idle
                self.origin.pool._watch(self.loop)


class Response:
    """A vendor's answer: status and headers are in; the body is read whole or chunk by chunk."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_exc",
        "_released",
        "_size",
        "_waiter",
        "content_length",
        "headers",
        "obs_text",
        "reason",
        "status",
    )

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        content_length: int | None,
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._exc: PoolError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        # Whether a header value or the reason holds bytes that are not UTF-8 (obs-text): kept as
        # surrogate escapes, they need writing back byte for byte.
        self.obs_text = False

    def __repr__(self) -> str:
        return f"<pool.Response {self.status} {self.reason!r}>"

    @property
    def content(self) -> Response:
        """The body stream (aiohttp's name for it): ``iter_chunked`` and ``read`` live on the Response."""
        return self

    def whole(self) -> bytes | None:
        """The rest of the body if all of it is in already (no wait), else None: ``read`` waits."""
        if not self._done:
            return None
        chunks = self._chunks
        body = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn._resume()
        return body

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        chunks = self._chunks
        parts: list[bytes] = []
        while not self._done:
            if self._size >= LOW_WATER:
                # Taken as it comes: the socket is paused past HIGH_WATER until the buffer drains.
                parts.extend(chunks)
                chunks.clear()
                self._size = 0
                self._conn._resume()
            await self._wait()
        rest = self.whole() or b""
        return b"".join((*parts, rest)) if parts else rest

    async def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size`` bytes, as it arrives."""
        chunks = self._chunks
        while True:
            if chunks:
                yield self._take(size)
            elif self._done:
                return
            else:
                await self._wait()

    def _take(self, size: int) -> bytes:
        chunks = self._chunks
        data = chunks.popleft()
        if len(data) > size:
            chunks.appendleft(data[size:])
            data = data[:size]
        else:
            parts: list[bytes] | None = None
            taken = len(data)
            while chunks and taken + len(chunks[0]) <= size:
                if parts is None:
                    parts = [data]
                following = chunks.popleft()
                parts.append(following)
                taken += len(following)
            if parts is not None:
                data = b"".join(parts)
        self._size -= len(data)
        if self._size <= LOW_WATER:
            self._conn._resume()
        return data

    async def _wait(self) -> None:
        if self._exc is not None:
            raise self._exc
        if self._released:
            raise Disconnected("the answer was released before it was read", answered=True)
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _finish(self) -> None:
        self._done = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: PoolError) -> None:
        if self._done:
            return
        self._exc = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def release(self) -> None:
        """Done with this answer (read or not); safe to call more than once."""
        if not self._released:
            self._released = True
            self._conn.release()


def head_bytes(lines: list[str]) -> bytes:
    """A message head from its lines (start line, then fields), as sent: values that came in as bytes
    that are not UTF-8 go out as those bytes. Exactly one CRLF per line and no stray CR or LF, so no
    value can start a field or a message of its own (ValueError)."""
    lines.append("\r\n")
    text = "\r\n".join(lines)
    newlines = len(lines)
    if text.count("\n") != newlines or text.count("\r") != newlines:
        raise ValueError("a header name or value contains CR or LF")
    return text.encode(_ENCODING, _ERRORS)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _obs_text(raw: list[tuple[bytes, bytes]], reason: str) -> bool:
    if any("\udc80" <= char <= "\udcff" for char in reason):
        return True
    for name, value in raw:
        try:
            name.decode(_ENCODING)
            value.decode(_ENCODING)
        except UnicodeDecodeError:
            return True
    return False


def _parser(conn: Connection) -> HttpResponseParser:
    parser = HttpResponseParser(conn)
    # Some leniencies aiohttp's client allows outside its debug mode, so vendors it accepted still work;
    # not in header values: a control character there (NUL, DEL, ...; HTAB is fine) fails the answer
    # with a 502 (RFC 9110 5.5 allows rejecting it; relayed, strict clients such as llhttp's refuse it).
    parser.set_dangerous_leniencies(
        lenient_headers=False, lenient_optional_cr_before_lf=True, lenient_spaces_after_chunk_size=True
    )
    return parser
