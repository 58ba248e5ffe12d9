"""The Redis client of the request path: one connection that every request shares.

redis-py gives each command a pooled connection, a retry wrapper and two timeouts; on the request
path (an idempotency claim and its completion, a global rate-limit slot, a breaker update) that was
most of what a keyed request cost. Redis answers a connection's commands in order, so here every
caller's command goes onto one connection and replies are matched to callers first in, first out:
the commands of one loop iteration leave in one write, the replies of many come back in one read,
and one ticker (not a timer per command) enforces the timeout.

- A command not answered within ``timeout`` fails with ``TimeoutError``, and the connection is
  dropped (a Redis that does not answer one command will not answer the next); the next command
  connects again.
- A command whose connection broke before its reply (a restarted Redis) is sent once more on a new
  connection. Every script the gateway runs on this path is safe to run twice.
- ``Script`` runs by EVALSHA and falls back to EVAL when the server does not know it (NOSCRIPT).

Commands that block the connection (BLPOP, XREAD BLOCK) must not come here: they stay on redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url


class ReplyError(Exception):
    """Redis answered a command with an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


class ConnectionLost(Exception):
    """The connection closed before the command's reply came."""


_INCOMPLETE = object()


def encode(args: Sequence[Any]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"a Redis argument must be bytes, str, int or float, not {type(arg).__name__}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply from ``buffer[pos:]``: (value, position after it), or (_INCOMPLETE, pos).
    Error replies are ``ReplyError`` values (inside an array too), nil is None."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buffer[pos]
    line = bytes(buffer[pos + 1 : end])
    if kind == 36:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buffer) < stop + 2:
            return _INCOMPLETE, pos
        return bytes(buffer[end + 2 : stop]), stop + 2
    if kind == 58:  # : integer
        return int(line), end + 2
    if kind == 42:  # * array
        count = int(line)
        if count < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(count):
            item, at = parse(buffer, at)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, at
    if kind == 43:  # + simple string
        return line, end + 2
    if kind == 45:  # - error
        return ReplyError(line.decode(errors="replace")), end + 2
    raise ConnectionLost(f"not a RESP reply (starts with {bytes([kind])!r})")


class _Protocol(asyncio.Protocol):
    def __init__(self, client: Multiplexed) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.buffer = bytearray()
        self.lost: Exception | None = None
        self.pending: list[bytes] = []  # written together at the end of this loop iteration
        self.loop = asyncio.get_running_loop()  # asked once (a getpid() system call in Python 3.11)

    def send(self, data: bytes, future: asyncio.Future[Any], deadline: float) -> None:
        self.waiters.append((future, deadline))
        pending = self.pending
        pending.append(data)
        if len(pending) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if self.lost is None and self.transport is not None:
            self.transport.write(b"".join(pending))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        waiters = self.waiters
        try:
            while pos < len(buffer):
                reply, pos = parse(buffer, pos)
                if reply is _INCOMPLETE:
                    break
                if not waiters:
                    raise ConnectionLost("a reply nobody asked for")
                future = waiters.popleft()[0]
                if not future.done():
                    future.set_result(reply)
        except (ConnectionLost, ValueError) as exc:
            self.fail(ConnectionLost(f"unreadable reply: {exc}"))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionLost(str(exc) if exc else "closed by the server"))

    def fail(self, error: Exception) -> None:
        """Fail every command waiting on this connection and drop it."""
        if self.lost is None:
            self.lost = error
        self.client.dropped(self)
        waiters, self.waiters = self.waiters, deque()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(type(error)(*error.args))
        if self.transport is not None:
            self.transport.abort()


class Multiplexed:
    """Commands over one shared connection (see the module's docstring); ``url`` as redis-py takes it."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.params: dict[str, Any] = dict(parse_url(url))
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closed = False
        self._ticker: asyncio.TimerHandle | None = None

    async def execute(self, *args: Any) -> Any:
        """The reply to one command; raises ReplyError, TimeoutError, ConnectionLost or OSError."""
        data = encode(args)
        try:
            return await self._send(data)
        except ConnectionLost:
            return await self._send(data)  # once more, on a new connection

    async def _send(self, data: bytes) -> Any:
        protocol = self._protocol
        if protocol is None:
            if self._closed:
                raise ConnectionLost("the store was closed")
            protocol = await self._connect()
        loop = protocol.loop
        future: asyncio.Future[Any] = loop.create_future()
        protocol.send(data, future, loop.time() + self.timeout)
        if self._ticker is None:
            self._ticker = loop.call_later(self._tick_seconds, self._tick, loop)
        reply = await future
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    @property
    def _tick_seconds(self) -> float:
        return min(0.05, self.timeout / 4)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commands are answered in order: when the oldest waiting one is overdue, the connection hangs."""
        self._ticker = None
        protocol = self._protocol
        if protocol is None or not protocol.waiters:
            return
        if protocol.waiters[0][1] <= loop.time():
            protocol.fail(TimeoutError(f"no reply within {self.timeout:g}s"))
            return
        self._ticker = loop.call_later(self._tick_seconds, self._tick, loop)

    def dropped(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def _connect(self) -> _Protocol:
        """The connection, opened once however many commands wait for it."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        params = self.params
        protocol = _Protocol(self)
        async with asyncio.timeout(self.timeout):
            if params.get("connection_class") is UnixDomainSocketConnection:
                await loop.create_unix_connection(lambda: protocol, params["path"])
            else:
                await loop.create_connection(
                    lambda: protocol,
                    params.get("host", "localhost"),
                    params.get("port", 6379),
                    ssl=_tls(params) if params.get("connection_class") is SSLConnection else None,
                )
            hello: list[Sequence[Any]] = []
            if params.get("password") is not None:
                user = params.get("username")
                hello.append(("AUTH", user, params["password"]) if user else ("AUTH", params["password"]))
            if params.get("db"):
                hello.append(("SELECT", params["db"]))
            futures = []
            for command in hello:
                future: asyncio.Future[Any] = loop.create_future()
                protocol.send(encode(command), future, loop.time() + self.timeout)
                futures.append(future)
            try:
                for future in futures:
                    if isinstance(reply := await future, ReplyError):
                        raise reply
            except BaseException:
                protocol.fail(ConnectionLost("closed after a failed AUTH or SELECT"))
                raise
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._protocol is not None:
            self._protocol.fail(ConnectionLost("the store was closed"))


def _tls(params: dict[str, Any]) -> ssl.SSLContext:
    """rediss://: the system's CAs (or ``ssl_ca_certs``), ``ssl_cert_reqs=none`` to verify nothing."""
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
    if params.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Script:
    """A Lua script run by its digest, sent whole when Redis does not know it yet."""

    def __init__(self, client: Multiplexed, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.client.execute("EVAL", self.source, len(keys), *keys, *args)  # and cached
