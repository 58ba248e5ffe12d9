"""The gateway's own request and answer types: what stages receive and return, free of any HTTP server.

The HTTP adapter (``gateway.http``) builds a ``Request`` from the server's request and writes the
``Answer`` a pipeline returns; delivery workers build a ``Request`` from a stored delivery and read the
``Answer`` themselves. Nothing between them knows the server.

An ``Answer``'s body is one of: ``body`` bytes (whole: a stage may read, replace or drop it, and the
retry stage may try again instead), a ``stream`` (written to the caller as it comes; whoever drops it
unread calls ``discard()`` so the vendor connection under it is closed), or neither (no body: an
answer to HEAD, a 204 or 304, whose ``Content-Length`` still describes the resource).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from multidict import CIMultiDict, CIMultiDictProxy, istr

from .errors import PROBLEM_CONTENT_TYPE, GatewayError, PayloadTooLarge

# Field names looked up on every request, as istr: a multidict lookup by istr skips folding the name.
REQUEST_ID = istr("X-Request-Id")


class BodySource(Protocol):
    """A caller's body as it arrives. Reading raises ``ClientClosedRequest`` when the caller's
    connection ends before the body does."""

    def chunks(self, size: int) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


@dataclass(slots=True, eq=False)
class Request:
    """The caller's request: method, the fields as the caller sent them, and the body."""

    method: str
    headers: CIMultiDictProxy[str]
    content_length: int | None = None  # as announced; None: none, or chunked
    # The body: bytes when it is held whole already (a queued delivery), a source to read from while
    # the caller is still sending it, or neither (no body).
    body: bytes | None = None
    source: BodySource | None = None
    # The subject of the certificate the caller presented over TLS ((OpenSSL name, value) pairs), when
    # the listener asks for one ([gateway] tls.client_ca_file); None otherwise.
    client_cert: frozenset[tuple[str, str]] | None = None
    # Set by a stage that must see the request through even if its caller leaves (idempotency: the
    # vendor's answer is stored for the caller's retry). The HTTP adapter then lets it run to its end
    # instead of cancelling it, and drops its answer.
    finish_without_caller: bool = False

    @property
    def has_body(self) -> bool:
        return self.body is not None or self.source is not None

    async def read_whole(self, limit: int, what: str = "request body") -> bytes:
        """The body whole, refused with PayloadTooLarge (naming ``what``) once it passes ``limit``
        bytes: at once when the announced length does, else as soon as the bytes read do."""
        if self.body is not None:
            return self.body
        if self.source is None:
            return b""
        length = self.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"{what} of {length} bytes is larger than {limit} bytes")
        parts: list[bytes] = []
        size = 0
        async for chunk in self.source.chunks(65536):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


@dataclass(slots=True, eq=False)
class Answer:
    """What a pipeline answers: a vendor's answer or one the gateway made."""

    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    reason: str | None = None
    # A header value holds bytes that are not UTF-8 (obs-text), kept as surrogate escapes: the adapter
    # writes such a head byte for byte.
    obs_text: bool = False
    release: Callable[[], None] | None = None  # frees what ``stream`` reads from (see ``discard``)

    @property
    def whole(self) -> bool:
        """Nothing of it needs reading from the vendor any more: it may be dropped and tried again."""
        return self.stream is None

    def discard(self) -> None:
        """Done with this answer without reading its stream (or after): free the vendor connection."""
        release, self.release = self.release, None
        if release is not None:
            release()


def has_obs_text(headers: CIMultiDict[str]) -> bool:
    """Whether a value holds bytes that were not UTF-8 (decoded as surrogate escapes)."""
    return not all(value.isascii() for value in headers.values()) and any(
        "\udc80" <= char <= "\udcff" for value in headers.values() for char in value
    )


def json_answer(
    data: object, status: int = 200, *, headers: Mapping[str, str] | None = None, content_type: str = ""
) -> Answer:
    """An answer the gateway makes with a JSON body."""
    fields: CIMultiDict[str] = CIMultiDict(headers or {})
    fields["Content-Type"] = content_type or "application/json"
    return Answer(status=status, headers=fields, body=orjson.dumps(data))


def problem_answer(error: GatewayError, request_id: str) -> Answer:
    """The gateway's own error as RFC 9457 problem+json: the one place a problem is rendered."""
    headers: CIMultiDict[str] = CIMultiDict(error.headers)
    headers["Content-Type"] = PROBLEM_CONTENT_TYPE
    headers[REQUEST_ID] = request_id
    return Answer(status=error.status, headers=headers, body=orjson.dumps(error.to_problem(request_id)))
