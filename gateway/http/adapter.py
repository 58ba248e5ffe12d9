"""The one place that turns aiohttp's server request into the gateway's ``Request`` and writes the
gateway's ``Answer`` (and its problems) to aiohttp. The pipeline never sees aiohttp's server types.

What it maps: a caller's body that breaks off is ``ClientClosedRequest`` (499) wherever it is read; a
streamed answer whose vendor breaks off after the head was sent closes the caller's connection (all
that can still be said), and a caller whose connection breaks meanwhile is told apart (``caller``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

from ..errors import PROBLEM_CONTENT_TYPE, ClientClosedRequest, GatewayError
from ..messages import Answer, Request
from ..upstream.pool import head_bytes

# What reading a caller's body raises when the caller's connection ended before the body did.
_CALLER_BODY_ERRORS = (ConnectionError, aiohttp.ClientPayloadError, HttpProcessingError)


class CallerBody:
    """The caller's body (``messages.BodySource``) over aiohttp's reader."""

    __slots__ = ("content", "received")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.received = 0

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.content.iter_chunked(size):
                self.received += len(chunk)
                yield chunk
        except _CALLER_BODY_ERRORS as exc:
            raise self._closed(exc) from None

    async def read(self) -> bytes:
        try:
            data = await self.content.read()
        except _CALLER_BODY_ERRORS as exc:
            raise self._closed(exc) from None
        self.received += len(data)
        return data

    def _closed(self, exc: BaseException) -> ClientClosedRequest:
        reason = str(exc) or type(exc).__name__
        return ClientClosedRequest(
            f"the caller's request body broke off after {self.received} bytes ({reason})"
        )


def incoming(request: web.Request) -> Request:
    """The gateway's view of aiohttp's request."""
    return Request(
        method=request.method,
        headers=request.headers,
        content_length=request.content_length,
        source=CallerBody(request.content) if request.body_exists else None,
    )


class StreamAborted(Exception):
    """A streamed answer failed after its head was sent, by the vendor or (``caller``) by the caller's
    connection closing."""

    def __init__(self, response: web.StreamResponse, message: str, *, caller: bool = False) -> None:
        super().__init__(message)
        self.response = response
        self.caller = caller


async def write_answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    """Write ``answer`` to the caller: a whole one is handed back to aiohttp; a streamed one is written
    here as it comes, and its vendor connection freed whatever happens."""
    if answer.stream is None and answer.body is not None:
        return _whole(answer)
    response = VendorStreamResponse(status=answer.status, reason=answer.reason, headers=answer.headers)
    _as_sent(response, answer.headers, answer.obs_text)
    try:
        await response.prepare(request)
        if answer.stream is not None:
            async for chunk in answer.stream:
                await response.write(chunk)
        await response.write_eof()
    except GatewayError as exc:
        # The status line is gone already: all the caller can be told is a broken connection.
        if request.transport is not None:
            request.transport.close()
        raise StreamAborted(response, exc.detail) from None
    except (ConnectionError, aiohttp.ClientError) as exc:  # the caller's connection broke
        text = str(exc)
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise StreamAborted(
            response, f"the caller closed the connection during the answer: {reason}", caller=True
        ) from None
    finally:
        answer.discard()
    return response


def problem_response(error: GatewayError, request_id: str) -> web.Response:
    body = orjson.dumps(error.to_problem(request_id))
    response = web.Response(status=error.status, body=body, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in error.headers.items():
        response.headers[name] = value
    response.headers["X-Request-Id"] = request_id
    return response


class VendorStreamResponse(web.StreamResponse):
    """An answer whose head is written as given, in two ways aiohttp would not:

    - no Content-Type where the answer has none (aiohttp labels any body application/octet-stream);
    - obs-text (RFC 9110 section 5.5: bytes that are not UTF-8, which the pool keeps as surrogate
      escapes) byte for byte: aiohttp's header writer drops them, so such a head is written here.
    """

    untyped = False
    raw = False

    async def _write_headers(self) -> None:
        if self.untyped:
            self.headers.popall(hdrs.CONTENT_TYPE, None)
        if not self.raw:
            return await super()._write_headers()
        request = self._req
        writer = self._payload_writer
        assert request is not None and isinstance(writer, StreamWriter)
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}"]
        lines.extend(map(": ".join, self.headers.items()))
        # As StreamWriter.write_headers does, which aiohttp then sends with the first body bytes.
        writer._headers_buf = head_bytes(lines)
        writer._headers_written = False
        if getattr(self, "_send_headers_immediately", True):
            writer.send_headers()


class VendorResponse(VendorStreamResponse, web.Response):
    """An answer with its body whole (see VendorStreamResponse)."""


def _whole(answer: Answer) -> web.Response:
    response = VendorResponse(
        status=answer.status, reason=answer.reason, body=answer.body, headers=answer.headers
    )
    _as_sent(response, answer.headers, answer.obs_text)
    return response


def _as_sent(response: VendorStreamResponse, headers: CIMultiDict[str], obs_text: bool) -> None:
    response.untyped = hdrs.CONTENT_TYPE not in headers
    response.raw = obs_text
