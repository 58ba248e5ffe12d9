"""JSON payload stages: validate, then transform, on the way out (request) and on the way back (response).

The body is read once and parsed once with orjson; ``Exchange.json`` shares the parsed value. The
request side checks the schema before the transform (docs/configuration.md) and fails with 400; the response
side works on the vendor's 2xx answers only (a vendor's own error passes through unchanged) and fails
with 502 in enforce mode, or logs and counts the failure in report mode.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import hdrs

from ...config import Route
from ...errors import BadGateway, BadRequest, SchemaViolation
from ...messages import Answer
from ...pipeline import Exchange, Handler
from ...services import Services
from ...transform import TransformError, apply

# The largest vendor answer a response stage reads whole; a larger one is a 502 on such routes.
MAX_RESPONSE_BYTES = 10 * 1024 * 1024


def _parse(body: bytes) -> Any:
    return orjson.loads(body)


def _is_json_type(content_type: str | None) -> bool:
    if not content_type:
        return True  # nothing declared: judge by the bytes
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class RequestPayload:
    """Parses the caller's JSON body, checks ``request_schema``, applies ``request_transform``."""

    def __init__(self, route: Route) -> None:
        self.schema = route.request_schema
        self.transform = route.request_transform

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        body = await ex.read_body()
        if not _is_json_type(ex.request.headers.get(hdrs.CONTENT_TYPE)):
            raise BadRequest(f"this route needs a JSON body, not {ex.request.headers[hdrs.CONTENT_TYPE]!r}")
        if not body.strip():
            raise BadRequest("this route needs a JSON body, and the request has none")
        try:
            document = _parse(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if self.schema is not None:
            errors = self.schema.errors(document)
            if errors:
                raise SchemaViolation(
                    f"request body fails {self.schema.name} at {len(errors)} place(s)", errors
                )
        if self.transform is not None:
            try:
                document = apply(self.transform, document)
            except TransformError as exc:
                raise BadRequest(f"request transform failed: {exc}") from None
            ex.body = orjson.dumps(document)
            ex.headers[hdrs.CONTENT_TYPE] = "application/json"
        ex.json = document
        return await call_next(ex)


class ResponsePayload:
    """Reads the vendor's 2xx JSON answer whole, checks ``response_schema``, applies the transform."""

    def __init__(self, route: Route, services: Services) -> None:
        self.schema = route.response_schema
        self.enforce = route.response_schema_mode == "enforce"
        self.transform = route.response_transform
        self.route = route.path
        self.services = services

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        ex.buffer_response_bytes = MAX_RESPONSE_BYTES
        # The body is inspected here, so ask for it uncompressed; the caller's own encoding wish is moot.
        ex.headers.popall(hdrs.ACCEPT_ENCODING, None)
        response = await call_next(ex)
        if not 200 <= response.status < 300 or response.body is None:
            return response
        body = response.body
        if not body or response.headers.get(hdrs.CONTENT_ENCODING, "identity") != "identity":
            self._fail(ex, "vendor answer is empty or encoded; expected a JSON body", [])
            return response
        try:
            document = _parse(body)
        except orjson.JSONDecodeError as exc:
            self._fail(ex, f"vendor answer is not valid JSON: {exc}", [])
            return response
        if self.schema is not None and (errors := self.schema.errors(document)):
            self._fail(ex, f"vendor answer fails {self.schema.name} at {len(errors)} place(s)", errors)
        if self.transform is None:
            return response
        try:
            document = apply(self.transform, document)
        except TransformError as exc:
            raise BadGateway(f"response transform failed: {exc}") from None
        headers = response.headers.copy()
        headers.popall(hdrs.CONTENT_LENGTH, None)
        headers[hdrs.CONTENT_TYPE] = "application/json"
        transformed = Answer(
            status=response.status, reason=response.reason, headers=headers, body=orjson.dumps(document)
        )
        ex.bytes_out = len(transformed.body or b"")
        return transformed

    def _fail(self, ex: Exchange, detail: str, errors: list[dict[str, str]]) -> None:
        """Enforce mode: 502. Report mode: log and count, and let the answer pass."""
        if self.enforce:
            raise BadGateway(detail, extra={"errors": errors} if errors else None)
        self.services.response_schema_failures[(ex.vendor.name, self.route)] += 1
        self.services.logger.event(
            "response_schema_failed",
            level="warning",
            request_id=ex.request_id,
            vendor=ex.vendor.name,
            route=self.route,
            detail=detail,
            errors=errors,
        )
