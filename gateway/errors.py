"""Typed errors, rendered to RFC 9457 problem+json in exactly one place (``messages.problem_answer``).

The tree::

    GatewayError                     status  when
    ├── BadRequest                   400     malformed target, path escape, bad JSON, bad header
    │   ├── SchemaViolation          400     request body fails the route's JSON Schema (adds ``errors``)
    │   └── BadIdempotencyKey        400     Idempotency-Key missing where required, or malformed
    ├── Unauthorized                 401     missing or unknown gateway key
    ├── Forbidden                    403     key not allowed this vendor, method or path
    ├── NotFound                     404     unknown vendor, or a route the vendor does not expose
    ├── MethodNotAllowed             405     a gateway endpoint asked with a method it does not answer
    ├── Conflict                     409     idempotency key in flight
    │   └── NotReplayable            409     idempotency key done, but its answer was too large to keep
    ├── CallerFault                          the caller's own doing: never a vendor failure
    │   ├── RequestTimeout           408     the head, or the next body byte, did not come in time
    │   ├── PayloadTooLarge          413     body over ``max_body_bytes``
    │   ├── UriTooLong               414     request target over ``max_url_bytes``
    │   ├── HeaderFieldsTooLarge     431     header fields together over ``max_header_bytes``
    │   └── ClientClosedRequest      499     the caller closed its connection before its body was in
    ├── UnprocessableContent         422     idempotency key reused with another request
    ├── TooManyRequests              429     the rate-limit queue could not admit the request
    ├── BadGateway                   502     vendor unreachable, or its response is unusable
    │   └── VendorUnreachable        502     no answer: connection refused, reset or broken off (retried)
    ├── ServiceUnavailable           503     circuit open, or the store is down and the route needs it
    │   └── CircuitOpen              503     the vendor's circuit breaker is open (adds Retry-After)
    ├── MethodNotImplemented         501     a method or framing the gateway does not serve (CONNECT)
    └── GatewayTimeout               504     vendor did not answer within its timeout

A vendor's own error response is never a ``GatewayError``: it passes through unchanged. A
``CallerFault`` never reaches a circuit breaker, a retry or a vendor's failure counts: the vendor did
nothing wrong. (499 is nginx's "client closed request": logged and counted, never seen by the caller.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://gateway.dev/problems/"


class GatewayError(Exception):
    """An error the gateway itself answers with; ``detail`` is shown to the caller, so no secrets."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal gateway error"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_BASE + self.slug

    def to_problem(self, request_id: str) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "request_id": request_id,
        }
        problem.update(self.extra)
        return problem


class BadRequest(GatewayError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class BadIdempotencyKey(BadRequest):
    slug = "idempotency-key"
    title = "Missing or malformed Idempotency-Key"


class SchemaViolation(BadRequest):
    slug = "schema-violation"
    title = "Request body does not match the route's schema"

    def __init__(self, detail: str, errors: Sequence[Mapping[str, str]]) -> None:
        super().__init__(detail, extra={"errors": [dict(e) for e in errors]})


class Unauthorized(GatewayError):
    status = 401
    slug = "unauthorized"
    title = "Missing or unknown gateway key"


class Forbidden(GatewayError):
    status = 403
    slug = "forbidden"
    title = "Caller not allowed"


class NotFound(GatewayError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(GatewayError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class Conflict(GatewayError):
    status = 409
    slug = "idempotency-in-flight"
    title = "A request with this idempotency key is still in flight"


class NotReplayable(Conflict):
    slug = "idempotency-not-replayable"
    title = "The request with this idempotency key completed, but its answer cannot be replayed"


class CallerFault(GatewayError):
    """Base of the errors that are the caller's doing (aborted, too large): not the vendor's."""


class RequestTimeout(CallerFault):
    status = 408
    slug = "request-timeout"
    title = "Request not received in time"


class UriTooLong(CallerFault):
    status = 414
    slug = "uri-too-long"
    title = "Request target too long"


class HeaderFieldsTooLarge(CallerFault):
    status = 431
    slug = "header-fields-too-large"
    title = "Request header fields too large"


class PayloadTooLarge(CallerFault):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class ClientClosedRequest(CallerFault):
    status = 499
    slug = "client-closed-request"
    title = "The caller closed the connection"


class UnprocessableContent(GatewayError):
    status = 422
    slug = "idempotency-mismatch"
    title = "Idempotency key reused with a different request"


class TooManyRequests(GatewayError):
    status = 429
    slug = "rate-limited"
    title = "Rate limit queue full"


class BadGateway(GatewayError):
    status = 502
    slug = "bad-gateway"
    title = "Vendor unreachable or its response unusable"


class VendorUnreachable(BadGateway):
    """The vendor gave no answer (connection refused, reset, broken off): the retry policy may try again.
    A vendor that answered with something unusable is a plain BadGateway, never retried."""


class ServiceUnavailable(GatewayError):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


class CircuitOpen(ServiceUnavailable):
    slug = "circuit-open"
    title = "Vendor circuit open"


class MethodNotImplemented(GatewayError):
    status = 501
    slug = "not-implemented"
    title = "Not implemented"


class GatewayTimeout(GatewayError):
    status = 504
    slug = "gateway-timeout"
    title = "Vendor did not answer in time"
