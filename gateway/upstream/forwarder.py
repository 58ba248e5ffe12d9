"""The forwarder: vendor calls through the keep-alive pool (``gateway.upstream.pool``), bodies streamed
both ways, the pool's errors mapped to problems in one place (``_vendor_error``).

Only this module catches ``pool.PoolError`` (and ``credentials`` catches ``aiohttp.ClientError`` for the
OAuth2 token endpoint it calls itself): every stage sees ``GatewayError`` subclasses.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_plus

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from ..config import Auth, Vendor
from ..errors import (
    BadGateway,
    ClientClosedRequest,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    VendorUnreachable,
)
from ..features.deprecation.tracker import DEPRECATION, SUNSET, DeprecationTracker
from ..messages import REQUEST_ID, Answer, BodySource
from ..pipeline import Exchange
from .credentials import TokenManager, TokenSource
from .pool import (
    BodyError,
    Endpoint,
    PoolError,
    ProtocolError,
    Response,
    Timeout,
    Timeouts,
    Transport,
    VendorRequest,
)
from .tls import client_context

# RFC 9110 section 7.6.1: fields that describe one connection, never forwarded either way.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
    )
)
_HOP_BY_HOP_NAMES = tuple(map(istr, HOP_BY_HOP))
# A vendor's cookies are for the caller that got them: never kept with an answer that is stored
# (idempotency records, delivery records) and shown or replayed to anyone else.
COOKIE_FIELDS = frozenset({"set-cookie", "set-cookie2"})
# Caller-side fields that describe the internal network or the gateway itself: not for third parties.
REQUEST_DROP = HOP_BY_HOP | frozenset(
    (
        "host",
        "content-length",  # set again from the body we actually send
        "expect",  # the gateway answered any 100-continue itself
        "forwarded",
        "via",
        "x-gateway-key",
        "x-gateway-fault",  # the fault stage's (features/faults): for the gateway, never the vendor
        "x-real-ip",
    )
)
# Bodies up to this size are read whole and sent with one write; larger ones are streamed.
SMALL_BODY = 64 * 1024
STREAM_CHUNK = 64 * 1024
# An answer with a status the retry policy may retry is read whole up to this size (so it can be
# dropped for another attempt); a larger one streams to the caller and is not retried.
RETRY_RESPONSE_BYTES = 256 * 1024
# A first attempt starts a few microseconds after its deadline was set: no new Timeouts for that.
DEADLINE_SLACK = 0.001


@dataclass(frozen=True, slots=True)
class VendorTransport:
    """What the forwarder precomputes per vendor at load: URL prefix, timeouts, TLS, credentials."""

    timeout: Timeouts
    endpoint: Endpoint  # scheme, host, port and TLS: which pool.Origin the requests go through
    path_prefix: str  # /base/path[/version prefix]: request targets start with it
    # Static credentials and the pinned version: (name, value) pairs that replace whatever the caller
    # sent under that header or query parameter (header names as istr: set on every request). Never
    # shown by repr: the values are secrets.
    set_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    set_query: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    tokens: TokenSource | None = None  # OAuth2: Authorization comes from the TokenManager


def vendor_transport(vendor: Vendor) -> VendorTransport:
    url = vendor.base_url
    path_prefix = vendor.base_path
    ssl_param = client_context(vendor.tls)
    limits = vendor.timeout
    timeout = Timeouts(
        total=limits.total_seconds, connect=limits.connect_seconds, read_idle=limits.read_idle_seconds
    )
    set_headers: list[tuple[str, str]] = []
    set_query: list[tuple[str, str]] = []
    tokens: TokenSource | None = None
    if isinstance(auth := vendor.auth, Auth):
        secret = auth.secret.reveal()
        if auth.type == "bearer":
            set_headers.append((hdrs.AUTHORIZATION, f"Bearer {secret}"))
        elif auth.type == "header":
            set_headers.append((istr(auth.name), secret))
        elif auth.type == "basic":
            basic = base64.b64encode(f"{auth.username}:{secret}".encode()).decode("ascii")
            set_headers.append((hdrs.AUTHORIZATION, f"Basic {basic}"))
        else:
            set_query.append((auth.name, secret))
    elif auth is not None:
        token_url = auth.token_url
        tokens = TokenSource(
            vendor=vendor.name,
            auth=auth,
            endpoint=endpoint_of(token_url, ssl_param),
            target=token_url.raw_path_qs or "/",
            timeout=timeout,
        )
    if (version := vendor.version) is not None:
        if version.kind == "header":
            set_headers.append((istr(version.name), version.value))
        elif version.kind == "query":
            set_query.append((version.name, version.value))
        else:
            # The caller's own version segment was taken off (gateway.versioning).
            path_prefix += version.value
    endpoint = endpoint_of(url, ssl_param)
    return VendorTransport(
        timeout=timeout,
        endpoint=endpoint,
        path_prefix=path_prefix,
        set_headers=tuple(set_headers),
        set_query=tuple(set_query),
        tokens=tokens,
    )


def endpoint_of(url: URL, tls: ssl.SSLContext | bool) -> Endpoint:
    """Where requests to ``url`` go: scheme, host, port and TLS (the pool keeps one Origin per endpoint)."""
    return Endpoint(
        scheme=url.scheme,
        host=url.raw_host or "",
        port=url.port or (443 if url.scheme == "https" else 80),
        host_header=url.host_port_subcomponent or "",
        ssl=tls,
    )


# Also without Authorization: the caller's gateway key came in it (client auth).
_REQUEST_DROP_WITH_KEY = REQUEST_DROP | {"authorization"}


def request_headers(
    incoming: CIMultiDictProxy[str], request_id: str, *, key_in_authorization: bool = False
) -> CIMultiDict[str]:
    """The caller's headers minus hop-by-hop, connection-named and internal ones, and minus
    Authorization when ``key_in_authorization`` (it carried the caller's gateway key)."""
    drop = _REQUEST_DROP_WITH_KEY if key_in_authorization else REQUEST_DROP
    connection = incoming.get(hdrs.CONNECTION)
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop or lower.startswith("x-forwarded-"):
            continue
        out.add(name, value)
    out[REQUEST_ID] = request_id
    return out


def response_headers(out: CIMultiDict[str], request_id: str) -> CIMultiDict[str]:
    """The vendor's answer's fields, edited in place for the caller: hop-by-hop and connection-named
    fields dropped, X-Request-Id set."""
    connection = out.get(hdrs.CONNECTION)
    for name in _HOP_BY_HOP_NAMES:
        if name in out:
            del out[name]
    if connection:
        for token in connection.split(","):
            if (named := token.strip()) in out:
                del out[named]
    out[REQUEST_ID] = request_id
    return out


async def _stream_body(source: BodySource, limit: int, exchange: Exchange) -> AsyncIterator[bytes]:
    """The caller's body as it arrives, stopping once it passes the vendor's limit."""
    async for chunk in source.chunks(STREAM_CHUNK):
        exchange.bytes_in += len(chunk)
        if exchange.bytes_in > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        yield chunk


class Forwarder:
    """Sends an Exchange to its vendor and turns the answer into the caller's response."""

    def __init__(
        self,
        transport: Transport,
        transports: dict[str, VendorTransport],
        *,
        tokens: TokenManager | None = None,
        deprecations: DeprecationTracker | None = None,
    ) -> None:
        self.transport = transport
        self.transports = transports
        self.tokens = tokens
        self.deprecations = deprecations
        if tokens is None and any(t.tokens is not None for t in transports.values()):
            raise ValueError("a vendor uses OAuth2: the Forwarder needs a TokenManager")

    async def __call__(self, ex: Exchange) -> Answer:
        request = ex.request
        transport = self.transports[ex.vendor.name]
        limit = ex.vendor.max_body_bytes
        headers = ex.headers
        for name, value in transport.set_headers:
            headers[name] = value
        query = ex.query
        for name, value in transport.set_query:
            query = _replace_query_param(query or "", name, value)
        if query is not None and "#" in query:
            query = query.partition("#")[0]  # a fragment is never sent
        # As the caller sent it: no "?" without one, a bare "?" kept.
        target = (transport.path_prefix + ex.path or "/") + ("" if query is None else "?" + query)

        whole = ex.body if ex.body is not None else request.body
        data: bytes | AsyncIterator[bytes] | None = whole
        if whole is not None:
            ex.bytes_in = len(whole)
        elif (body_source := request.source) is not None:
            length = request.content_length
            if length is not None and length > limit:
                raise PayloadTooLarge(f"request body of {length} bytes is larger than {limit} bytes")
            if length is not None and length <= SMALL_BODY:
                data = await body_source.read()
                ex.bytes_in = len(data)
            elif transport.tokens is not None:
                # Kept whole (up to max_body_bytes) so the one retry after a vendor 401 can resend it.
                data = await ex.read_body()
            else:
                if length is not None:
                    headers[hdrs.CONTENT_LENGTH] = str(length)
                data = _stream_body(body_source, limit, ex)

        source, manager = transport.tokens, self.tokens
        token = None
        if source is not None and manager is not None:
            token = await manager.get(source)
            headers[hdrs.AUTHORIZATION] = token.header
        # _respond sets upstream_seconds to "now - started": shifting started back by the time earlier
        # attempts (retries) already spent keeps the access log's upstream_ms the sum over attempts.
        started = time.perf_counter() - ex.upstream_seconds
        upstream = await self._send(ex, transport, target, headers, data)
        if token is not None and upstream.status == 401 and source is not None and manager is not None:
            # Revoked or expired early: drop that token, get another, try once more. (``data`` is bytes
            # or None here: OAuth2 vendors never get a streamed body.) A second 401 is the caller's.
            await _discard(upstream)
            manager.discard(source, token)
            token = await manager.get(source)
            headers[hdrs.AUTHORIZATION] = token.header
            upstream = await self._send(ex, transport, target, headers, data)
        if self.deprecations is not None and (DEPRECATION in upstream.headers or SUNSET in upstream.headers):
            self.deprecations.observe(ex.vendor.name, ex.route, ex.method, ex.path, upstream.headers)
        streaming = False
        try:
            answer = self._respond(ex, upstream, started)
            if not isinstance(answer, Answer):
                answer = await answer
            streaming = answer.stream is not None
            return answer
        finally:
            if not streaming:
                upstream.release()

    async def _send(
        self,
        ex: Exchange,
        transport: VendorTransport,
        target: str,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
    ) -> Response:
        timeout = transport.timeout if ex.deadline is None else _until_deadline(ex, transport.timeout)
        started = time.perf_counter()
        ex.attempts += 1
        try:
            # A POST whose Idempotency-Key the vendor gets may be resent after a stale connection.
            idempotent = True if ex.idempotency_forwarded else None
            return await self.transport.send(
                VendorRequest(transport.endpoint, ex.method, target, headers, data, idempotent), timeout
            )
        except BodyError as exc:
            # The caller's body failed while it streamed: its own fault, never the vendor's.
            if isinstance(exc.__cause__, GatewayError):
                raise exc.__cause__ from None
            raise ClientClosedRequest(f"the caller's request body failed: {exc}") from None
        except PoolError as exc:
            raise _vendor_error(ex, exc, answering=False) from None
        finally:
            ex.upstream_seconds += time.perf_counter() - started

    def _respond(self, ex: Exchange, upstream: Response, started: float) -> Answer | Awaitable[Answer]:
        """The caller's answer: at once when there is nothing to wait for (no body, or a small one in
        whole with its head, the usual), else the coroutine that reads what it needs first."""
        headers = response_headers(upstream.headers, ex.request_id)
        length = upstream.content_length
        status, reason, obs_text = upstream.status, upstream.reason, upstream.obs_text
        bodiless = ex.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if bodiless:
            ex.upstream_seconds = time.perf_counter() - started
            return Answer(status=status, headers=headers, reason=reason, obs_text=obs_text)
        # Read whole: what fits in SMALL_BODY, what a stage needs (buffer: past its limit the answer is a
        # 502), and what a stage would like (capture: past its limit the answer streams as usual).
        capture = ex.capture_response_bytes
        if status in ex.retry_statuses:
            # The retry stage decides on this answer before the caller sees a byte of it.
            capture = max(capture, RETRY_RESPONSE_BYTES)
        whole_limit = max(ex.buffer_response_bytes or capture, SMALL_BODY)
        if length is not None and length <= whole_limit and (body := upstream.whole()) is not None:
            ex.upstream_seconds = time.perf_counter() - started
            headers.popall(hdrs.CONTENT_LENGTH, None)
            ex.bytes_out = len(body)
            return Answer(status=status, headers=headers, body=body, reason=reason, obs_text=obs_text)
        return self._read(ex, upstream, headers, capture, whole_limit, started)

    async def _read(
        self,
        ex: Exchange,
        upstream: Response,
        headers: CIMultiDict[str],
        capture: int,
        whole_limit: int,
        started: float,
    ) -> Answer:
        """``_respond``'s answer once what it needs of the body is in."""
        length = upstream.content_length
        status, reason, obs_text = upstream.status, upstream.reason, upstream.obs_text
        body: bytes | None = None
        prefix = b""  # the start of an answer of unknown length that outgrew the capture limit
        if length is None and capture and not ex.buffer_response_bytes:
            try:
                prefix, complete = await _read_upto(upstream, whole_limit)
            except PoolError as exc:
                raise _vendor_error(ex, exc, answering=True) from None
            finally:
                ex.upstream_seconds = time.perf_counter() - started
            if complete:
                body, prefix = prefix, b""
        if body is not None or ex.buffer_response_bytes or (length is not None and length <= whole_limit):
            limit = whole_limit
            if length is not None and length > limit:
                raise BadGateway(
                    f"vendor {ex.vendor.name} answered {length} bytes, more than the {limit} this route reads"
                )
            try:
                if body is None:  # (a small one in whole with its head was answered by _respond)
                    body = await _read_limited(upstream, limit)
            except _TooLong:
                raise BadGateway(
                    f"vendor {ex.vendor.name} answered more than the {limit} bytes this route reads"
                ) from None
            except PoolError as exc:
                raise _vendor_error(ex, exc, answering=True) from None
            finally:
                ex.upstream_seconds = time.perf_counter() - started
            headers.popall(hdrs.CONTENT_LENGTH, None)
            ex.bytes_out = len(body)
            return Answer(status=status, headers=headers, body=body, reason=reason, obs_text=obs_text)
        if ex.detached:
            # No caller to stream to (a delivery worker): up to capture_response_bytes of it is kept.
            return await _detached_answer(ex, upstream, headers, prefix, whole_limit, started)
        return Answer(
            status=status,
            headers=headers,
            stream=_stream_answer(ex, upstream, prefix, started),
            reason=reason,
            obs_text=obs_text,
            release=upstream.release,
        )


async def _stream_answer(
    ex: Exchange, upstream: Response, prefix: bytes, started: float
) -> AsyncIterator[bytes]:
    """The rest of a vendor's answer as it arrives; a failure is the vendor's (mapped as everywhere)."""
    try:
        if prefix:
            ex.bytes_out += len(prefix)
            yield prefix
        async for chunk in upstream.content.iter_chunked(STREAM_CHUNK):
            ex.bytes_out += len(chunk)
            yield chunk
    except PoolError as exc:
        raise _vendor_error(ex, exc, answering=True) from None
    finally:
        ex.upstream_seconds = time.perf_counter() - started
        upstream.release()


class _TooLong(Exception):
    pass


def _vendor_error(ex: Exchange, exc: PoolError, *, answering: bool) -> GatewayError:
    """The one mapping of the pool's errors: a timeout is 504; no answer (refused, reset, broken off) is
    VendorUnreachable, which the retry policy may retry; an answer that is not HTTP is a plain 502."""
    name = ex.vendor.name
    if isinstance(exc, Timeout):
        if answering:
            return GatewayTimeout(
                f"vendor {name} sent nothing of its answer for {ex.vendor.timeout.read_idle_seconds:g}s"
            )
        return GatewayTimeout(f"vendor {name} did not answer within {ex.vendor.timeout.total_seconds:g}s")
    if isinstance(exc, ProtocolError):
        return BadGateway(f"vendor {name} answered with invalid HTTP: {exc}")
    if answering:
        return VendorUnreachable(f"vendor {name} broke off its answer: {exc}")
    return VendorUnreachable(f"vendor {name} is unreachable: {exc}")


def _until_deadline(ex: Exchange, timeout: Timeouts) -> Timeouts:
    """The vendor's timeout cut to what is left of the request's deadline (all attempts together)."""
    assert ex.deadline is not None
    left = ex.deadline - time.perf_counter()
    if left <= 0:
        raise GatewayTimeout(
            f"vendor {ex.vendor.name} did not answer within {ex.vendor.timeout.total_seconds:g}s "
            "(every attempt together)"
        )
    if timeout.total is not None and timeout.total <= left + DEADLINE_SLACK:
        return timeout
    # NamedTuple._replace is a Python-level call: this runs on every retried-route attempt.
    return Timeouts(left, min(timeout.connect or left, left), timeout.read_idle)


async def _detached_answer(
    ex: Exchange, upstream: Response, headers: CIMultiDict[str], prefix: bytes, limit: int, started: float
) -> Answer:
    """The answer whole, but only its first ``limit`` bytes (the rest is read and dropped, and
    ``X-Gateway-Truncated`` names the full size)."""
    parts = [prefix]
    size = len(prefix)
    total = size
    try:
        async for chunk in upstream.content.iter_chunked(STREAM_CHUNK):
            total += len(chunk)
            if size < limit:
                parts.append(chunk[: limit - size])
                size += len(parts[-1])
    except PoolError as exc:
        raise _vendor_error(ex, exc, answering=True) from None
    finally:
        ex.upstream_seconds = time.perf_counter() - started
    body = b"".join(parts)
    headers.popall(hdrs.CONTENT_LENGTH, None)
    if total > size:
        headers["X-Gateway-Truncated"] = str(total)
    ex.bytes_out = len(body)
    return Answer(status=upstream.status, headers=headers, body=body, reason=upstream.reason)


async def _read_upto(upstream: Response, limit: int) -> tuple[bytes, bool]:
    """An answer of unknown length: (body, True) if it ends within ``limit``, else (its start, False)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in upstream.content.iter_chunked(STREAM_CHUNK):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


async def _read_limited(upstream: Response, limit: int) -> bytes:
    if upstream.content_length is not None:
        return await upstream.read()  # already checked against the limit
    body, complete = await _read_upto(upstream, limit)
    if not complete:
        raise _TooLong
    return body


async def _discard(upstream: Response) -> None:
    """Done with an answer nobody will see: read a small body so the connection can be reused."""
    try:
        if upstream.content_length is not None and upstream.content_length <= SMALL_BODY:
            await upstream.read()
    except PoolError:
        pass
    finally:
        upstream.release()


def _replace_query_param(query: str, name: str, value: str) -> str:
    """Drop every ``name=`` the caller sent and append the configured one (raw bytes elsewhere kept)."""
    kept = [part for part in query.split("&") if part and unquote_plus(part.partition("=")[0]) != name]
    kept.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return "&".join(kept)
