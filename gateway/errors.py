"""Typed errors, rendered to RFC 9457 problem+json in exactly one place (``messages.problem_answer``).

Each class that sets its own ``slug`` is one problem type: its ``type`` is ``/_gateway/problems/SLUG``,
a reference relative to the gateway's own address, where the gateway serves a page made from the
class's ``title``, ``status`` and docstring (``http/problems.py``). docs/http.md lists the same types.
Every such class lives here, so ``problem_types()`` sees them all whatever was imported; a feature's
own subclass (``RateLimited``) may add fields but not a type.

The tree::

    GatewayError                     status  when
    ├── BadRequest                   400     malformed target, path escape, bad JSON, bad header
    │   ├── SchemaViolation          400     request body fails the route's JSON Schema (adds ``errors``)
    │   └── BadIdempotencyKey        400     Idempotency-Key missing where required, or malformed
    ├── Unauthorized                 401     missing or unknown gateway key
    ├── SignatureRejected            401     a webhook's signature or timestamp is not accepted
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
PROBLEM_TYPE_BASE = "/_gateway/problems/"


class GatewayError(Exception):
    """The gateway failed in a way it did not foresee. The error is logged with the request id; nothing
    was sent to the vendor after the failure. Report it with the ``request_id``.

    (The base of every error the gateway itself answers with; ``detail`` is shown to the caller, so it
    never holds a secret.)
    """

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
    """The request cannot be sent as it is: a target that is not a plain path or would leave the
    vendor's base path (``..``, encoded dots or slashes, backslashes, ``//``), a body that is not JSON
    where the route needs JSON, a request transform that cannot apply, or framing that is not valid
    HTTP/1.1. ``detail`` says which. Fix the request; sending it again unchanged fails again."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class BadIdempotencyKey(BadRequest):
    """The route requires an ``Idempotency-Key`` and the request has none, or the key is malformed:
    more than one, empty, longer than 255 characters, not printable ASCII, or a broken RFC 8941 string.
    Send one key, as ``abc`` or ``"abc"``."""

    slug = "idempotency-key"
    title = "Missing or malformed Idempotency-Key"


class SchemaViolation(BadRequest):
    """The request body fails the route's JSON Schema. ``errors`` lists every failing place as
    ``{"path": JSON Pointer, "message": ...}`` (up to 50). Nothing was sent to the vendor."""

    slug = "schema-violation"
    title = "Request body does not match the route's schema"

    def __init__(self, detail: str, errors: Sequence[Mapping[str, str]]) -> None:
        super().__init__(detail, extra={"errors": [dict(e) for e in errors]})


class Unauthorized(GatewayError):
    """The gateway has ``[clients]`` and the request carries no gateway key, or one it does not know.
    Send your key as ``Authorization: Bearer KEY`` or ``X-Gateway-Key: KEY``. Answered before any
    404, so an unknown caller learns no vendor names."""

    status = 401
    slug = "unauthorized"
    title = "Missing or unknown gateway key"


class SignatureRejected(GatewayError):
    """``POST /_webhooks/NAME``: the request's signature is missing or matches none of the webhook's
    secrets, or its signed timestamp is further from now than ``verify.tolerance_seconds`` (a replay).
    Nothing is published, and the body is not logged. The vendor must sign with the secret configured
    for this webhook."""

    status = 401
    slug = "webhook-signature"
    title = "Webhook signature not accepted"


class Forbidden(GatewayError):
    """The caller's key is valid, but its ``allow`` list does not cover this vendor, method and path.
    ``detail`` names the client, method, path and vendor; an operator can widen ``allow``."""

    status = 403
    slug = "forbidden"
    title = "Caller not allowed"


class NotFound(GatewayError):
    """No vendor has this name, the vendor exposes no route for this method and path (``expose =
    "declared"``), there is no such gateway endpoint under ``/_gateway/`` (``detail`` lists them), or
    no such delivery (finished ones are kept for ``[delivery] keep_seconds``)."""

    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(GatewayError):
    """A ``/_gateway/`` endpoint was asked with a method it does not answer: they answer GET and HEAD
    (``Allow`` says so)."""

    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class Conflict(GatewayError):
    """A request with this ``Idempotency-Key`` is still running. Retry after ``Retry-After`` seconds:
    once it has completed, its answer is replayed to you."""

    status = 409
    slug = "idempotency-in-flight"
    title = "A request with this idempotency key is still in flight"


class NotReplayable(Conflict):
    """The request with this ``Idempotency-Key`` completed, but its answer was larger than the vendor's
    ``idempotency.max_body_bytes`` and was not kept, so it cannot be replayed. The vendor is not called
    again for this key; use a new key only if a second call is what you want."""

    slug = "idempotency-not-replayable"
    title = "The request with this idempotency key completed, but its answer cannot be replayed"


class CallerFault(GatewayError):
    """Base of the errors that are the caller's doing (aborted, too large): not the vendor's. Not a
    problem type of its own: it sets no ``slug``."""


class RequestTimeout(CallerFault):
    """The request head was not complete within ``[gateway] header_timeout_seconds``, or no byte of its
    body came for ``body_timeout_seconds``. The connection is closed. Never counted against a vendor."""

    status = 408
    slug = "request-timeout"
    title = "Request not received in time"


class UriTooLong(CallerFault):
    """The request target is longer than ``[gateway] max_url_bytes``. The target is not echoed."""

    status = 414
    slug = "uri-too-long"
    title = "Request target too long"


class HeaderFieldsTooLarge(CallerFault):
    """The request's header fields together are larger than ``[gateway] max_header_bytes``. No field is
    echoed."""

    status = 431
    slug = "header-fields-too-large"
    title = "Request header fields too large"


class PayloadTooLarge(CallerFault):
    """The request body is larger than the vendor's ``max_body_bytes`` (by default ``[gateway]
    max_body_bytes``), by its ``Content-Length`` or as it streamed in."""

    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class ClientClosedRequest(CallerFault):
    """The caller closed its connection before its request body was in (or before its answer). Logged
    and counted as 499, nginx's "client closed request"; a caller never receives it."""

    status = 499
    slug = "client-closed-request"
    title = "The caller closed the connection"


class UnprocessableContent(GatewayError):
    """This ``Idempotency-Key`` was already used for a different request (method, path, query or body).
    Use a new key for a new request."""

    status = 422
    slug = "idempotency-mismatch"
    title = "Idempotency key reused with a different request"


class TooManyRequests(GatewayError):
    """A rate limit (the vendor's, the route's or the caller's own ``rate_limit``) could not admit the
    request within its ``max_wait_seconds`` and queue, or the vendor asked to pause. ``policy`` names
    the limit; ``Retry-After``, ``RateLimit-Policy`` and ``RateLimit`` say when to try again."""

    status = 429
    slug = "rate-limited"
    title = "Rate limit exceeded"


class BadGateway(GatewayError):
    """The vendor could not be reached after the retries that were safe, or its answer is unusable:
    not HTTP/1.1, larger than the route reads, failing the route's response schema in ``enforce``
    mode (``errors`` lists where), a response transform that cannot apply, or a failing OAuth2 token
    endpoint. ``detail`` says which."""

    status = 502
    slug = "bad-gateway"
    title = "Vendor unreachable or its response unusable"


class VendorUnreachable(BadGateway):
    """The vendor gave no answer (connection refused, reset, broken off): the retry policy may try again.
    A vendor that answered with something unusable is a plain BadGateway, never retried."""


class ServiceUnavailable(GatewayError):
    """The store (Redis) is unreachable and this request needs it: a route with ``idempotency =
    "required"``, an async delivery, reading a delivery, or ``/_gateway/ready``. Retry later (the
    proxied ones carry ``Retry-After``)."""

    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


class CircuitOpen(ServiceUnavailable):
    """The vendor's circuit breaker is open: too many of its recent calls failed, so the gateway answers
    at once without calling it. ``Retry-After`` says when it lets a probe through."""

    slug = "circuit-open"
    title = "Vendor circuit open"


class MethodNotImplemented(GatewayError):
    """A method or framing the gateway does not serve: ``CONNECT`` (it is not a forward proxy)."""

    status = 501
    slug = "not-implemented"
    title = "Not implemented"


class GatewayTimeout(GatewayError):
    """The vendor did not answer within its ``timeout.total_seconds`` (every attempt together), or its
    answer stalled for ``read_idle_seconds`` before anything had reached the caller."""

    status = 504
    slug = "gateway-timeout"
    title = "Vendor did not answer in time"


def problem_types() -> list[type[GatewayError]]:
    """Every problem type: each GatewayError class that sets its own ``slug``, by status then slug."""
    found: dict[str, type[GatewayError]] = {}
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "slug" in cls.__dict__:
            found.setdefault(cls.slug, cls)
    return sorted(found.values(), key=lambda cls: (cls.status, cls.slug))
