"""Idempotency keys (docs/http.md, draft-ietf-httpapi-idempotency-key-header).

A request carrying ``Idempotency-Key`` claims the key in the store (scoped by caller, vendor and key)
before the vendor is called. Then:

- nobody had it: the request runs; the vendor's answer is stored if it is final (2xx, and 4xx but 408,
  409, 425, 429), otherwise the claim is released so the caller may retry;
- it is in flight elsewhere: 409, with ``Retry-After``;
- it was used for another method, path, query or body (the fingerprint): 422;
- it completed: the stored status, headers and body are replayed with ``Idempotent-Replayed: true``
  and the vendor is not called; a completed answer too large to keep gives 409 naming that reason.
  The vendor's ``Set-Cookie`` reaches the first caller only: it is neither stored nor replayed.

Invariants: a claim is one atomic store operation; only its owner (a random token per request) can
complete, renew or release it; its lease is renewed while the request runs, so a live owner keeps
the key however slow the vendor, and a dead one frees it after ``lease_seconds``. Gateway-made errors,
vendor 5xx, timeouts and network errors are never stored.

Bodies: the request body is read whole (bounded by the vendor's ``max_body_bytes``) to fingerprint it
and is then sent from memory. The answer is captured for storing through
``Exchange.capture_response_bytes``: the forwarder hands back answers up to the vendor's
``idempotency.max_body_bytes`` whole and streams larger ones untouched; for those only the key, status
and headers are kept, and a replay answers 409 ``idempotency-not-replayable``.

Forwarding: with ``idempotency.forward_header`` the vendor gets the key (unquoted) under that name, so a
request repeated after a lost answer or an expired lease is safe at the vendor too, and
``Exchange.idempotency_forwarded`` tells the retry policy that a POST may be retried. Without it the
caller's field passes through untouched, as any other header.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Sequence

from multidict import CIMultiDict

from ...config import IDEMPOTENCY_DEFAULT_METHODS, IdempotencyMode, Route, Vendor
from ...errors import (
    BadIdempotencyKey,
    Conflict,
    NotReplayable,
    ServiceUnavailable,
    UnprocessableContent,
)
from ...messages import Answer, has_obs_text
from ...observability.logging import Logger
from ...pipeline import Exchange, Handler
from ...services import Services
from ...store import StoreUnavailable
from ...upstream.forwarder import COOKIE_FIELDS
from .store import IdempotencyKey, IdempotencyOps, IdempotencyRecord, StoredResponse

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Statuses that are a final answer worth replaying (docs/http.md); everything else may be retried.
NOT_STORED_4XX = frozenset({408, 409, 425, 429})
# Response fields that describe one delivery rather than the answer: a replay gets fresh ones.
NOT_REPLAYED = frozenset(
    h.lower() for h in ("X-Request-Id", "Date", "Content-Length", "Transfer-Encoding", REPLAYED_HEADER)
)
# Vendor cookies are the first caller's session: that caller gets them live, but they are never stored,
# and never replayed (not even from a record stored before they were left out), so a retry or another
# request with the key cannot pick up someone's session.
NOT_STORED = NOT_REPLAYED | COOKIE_FIELDS
STORE_WARNING_INTERVAL_SECONDS = 10.0


def storable(status: int) -> bool:
    return 200 <= status < 300 or (400 <= status < 500 and status not in NOT_STORED_4XX)


def parse_key(values: Sequence[str]) -> str:
    """The key from the ``Idempotency-Key`` field values: an RFC 8941 string ("abc") or bare (abc)."""
    if len(values) != 1:
        raise BadIdempotencyKey(f"send one {HEADER} header, not {len(values)}")
    raw = values[0].strip(" \t")
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise BadIdempotencyKey(f"{HEADER} starts with '\"' but is not a complete quoted string")
        key = _unquote(raw[1:-1])
    else:
        key = raw
    if not key:
        raise BadIdempotencyKey(f"{HEADER} is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise BadIdempotencyKey(f"{HEADER} has {len(key)} characters; at most {MAX_KEY_LENGTH} are allowed")
    for char in key:
        if char < " " or char == "\x7f":
            raise BadIdempotencyKey(f"{HEADER} contains a control character ({ord(char):#04x})")
        if char > "\x7e":
            raise BadIdempotencyKey(f"{HEADER} must be ASCII")
    return key


def _unquote(inner: str) -> str:
    if "\\" not in inner and '"' not in inner:
        return inner
    out: list[str] = []
    chars = iter(inner)
    for char in chars:
        if char == '"':
            raise BadIdempotencyKey(f"{HEADER} has an unescaped '\"' inside its quotes")
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in ('"', "\\"):
                raise BadIdempotencyKey(f"{HEADER} may escape only '\"' and '\\\\' inside its quotes")
            char = escaped
        out.append(char)
    return "".join(out)


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(body)
    return digest.hexdigest()


class _Leases:
    """The claims a stage's requests hold while they run, renewed by one ticker every sixth of the
    lease: a request shorter than that costs a dict entry, not a timer. A lease is renewed between a
    third and a half of a lease after it was taken or last renewed, so it never lapses while its
    owner lives. A renewal that finds the lease gone is logged (another process may now run the same
    key) and that lease is not renewed again."""

    def __init__(self, stage: IdempotencyStage) -> None:
        self.stage = stage
        self.seconds = stage.vendor.idempotency.lease_seconds
        self.held: dict[str, tuple[IdempotencyKey, float]] = {}  # owner -> (key, taken or renewed at)
        self._ticker: asyncio.TimerHandle | None = None
        self._renewals: set[asyncio.Task[None]] = set()

    def hold(self, key: IdempotencyKey, owner: str) -> None:
        self.held[owner] = (key, time.monotonic())
        if self._ticker is None:
            loop = asyncio.get_running_loop()
            self._ticker = loop.call_later(self.seconds / 6, self._tick, loop)

    def drop(self, owner: str) -> None:
        self.held.pop(owner, None)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ticker = None
        now = time.monotonic()
        for owner, (key, since) in list(self.held.items()):
            if now - since >= self.seconds / 3:
                self.held[owner] = (key, now)
                task = loop.create_task(self._renew(key, owner))
                self._renewals.add(task)
                task.add_done_callback(self._renewals.discard)
        if self.held:
            self._ticker = loop.call_later(self.seconds / 6, self._tick, loop)

    async def _renew(self, key: IdempotencyKey, owner: str) -> None:
        stage = self.stage
        try:
            held = await stage.store.extend(key, owner=owner, lease_seconds=self.seconds)
        except StoreUnavailable as exc:
            stage.store_warning("idempotency_lease_renewal_failed", exc)
            return  # unknown: tried again next time; the lease may still hold
        if not held and owner in self.held:
            self.drop(owner)
            stage.logger.event("idempotency_lease_lost", level="warning", vendor=key.vendor, key=key.key)


class IdempotencyStage:
    def __init__(
        self,
        vendor: Vendor,
        mode: IdempotencyMode,
        services: Services,
        *,
        methods: frozenset[str] | None = None,
    ) -> None:
        self.vendor = vendor
        self.required = mode == "required"
        self.methods = methods  # None: every method the route matches
        self.services = services
        self.store: IdempotencyOps = services.store.idempotency
        self.logger: Logger = services.logger
        self.forward_header = vendor.idempotency.forward_header
        self.leases = _Leases(self)
        self._next_store_warning = 0.0

    def count(self, outcome: str) -> None:
        self.services.idempotency_outcomes[(self.vendor.name, outcome)] += 1

    def store_warning(self, event: str, exc: Exception) -> None:
        # A down store fails every keyed request; one line per interval says so without flooding.
        now = time.monotonic()
        if now >= self._next_store_warning:
            self._next_store_warning = now + STORE_WARNING_INTERVAL_SECONDS
            self.logger.event(event, level="warning", vendor=self.vendor.name, error=str(exc))

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Answer:
        if self.methods is not None and exchange.method not in self.methods:
            return await call_next(exchange)
        values = exchange.request.headers.getall(HEADER, ())
        if not values:
            if self.required:
                self.count("invalid_key")
                raise BadIdempotencyKey(f"this route requires an {HEADER} header (1 to 255 characters)")
            return await call_next(exchange)
        try:
            key = parse_key(values)
        except BadIdempotencyKey:
            self.count("invalid_key")
            raise
        if self.forward_header is not None:
            # The vendor gets the key, unquoted, under its own name and nowhere else. Without a
            # forward_header the caller's field passes through as any other header would.
            exchange.headers.popall(HEADER, None)
            exchange.headers[self.forward_header] = key
            exchange.idempotency_forwarded = True
        exchange.idempotency_key = key
        body = await exchange.read_body()
        scope = IdempotencyKey(vendor=self.vendor.name, client=exchange.client, key=key)
        digest = fingerprint(exchange.method, exchange.path, exchange.query or "", body)
        owner = os.urandom(12).hex()
        settings = self.vendor.idempotency
        try:
            claim = await self.store.claim(
                scope, fingerprint=digest, owner=owner, lease_seconds=settings.lease_seconds
            )
        except StoreUnavailable as exc:
            self.store_warning("idempotency_store_unavailable", exc)
            if self.required:
                self.count("unavailable")
                raise ServiceUnavailable(
                    "the idempotency store is unavailable and this route requires idempotency",
                    headers={"Retry-After": "1"},
                ) from None
            self.count("bypassed")
            return await call_next(exchange)
        if not claim.acquired:
            assert claim.existing is not None
            return self._answer_existing(exchange, claim.existing, digest)
        # A caller that goes away does not stop a keyed request: it runs to its end and its answer is
        # stored, so the caller's retry with the same key is replayed instead of sent again.
        exchange.request.finish_without_caller = True
        return await self._run(exchange, call_next, scope, owner)

    def _answer_existing(self, ex: Exchange, record: IdempotencyRecord, digest: str) -> Answer:
        if record.fingerprint != digest:
            self.count("mismatch")
            raise UnprocessableContent(
                f"this {HEADER} was already used for a different request (method, path, query or body); "
                "use a new key for a new request"
            )
        if record.state == "in_flight" or record.response is None:
            self.count("in_flight")
            raise Conflict(
                f"a request with this {HEADER} is still in flight; retry once it has completed",
                headers={"Retry-After": "1"},
            )
        stored = record.response
        if stored.body is None:
            self.count("not_replayable")
            raise NotReplayable(
                f"the request with this {HEADER} completed with status {stored.status}, but its answer was "
                f"larger than the {self.vendor.idempotency.max_body_bytes} bytes kept for replay"
            )
        self.count("replayed")
        return replay(ex, stored)

    async def _run(self, ex: Exchange, call_next: Handler, scope: IdempotencyKey, owner: str) -> Answer:
        settings = self.vendor.idempotency
        ex.capture_response_bytes = max(ex.capture_response_bytes, settings.max_body_bytes)
        self.leases.hold(scope, owner)
        try:
            response = await call_next(ex)
        except BaseException:
            # Gateway-made errors, timeouts, network errors, a broken stream, a cancelled request:
            # nothing final happened that a retry must not repeat.
            self.leases.drop(owner)
            self.count("not_stored")
            await self._release(scope, owner)
            raise
        self.leases.drop(owner)
        if not storable(response.status):
            self.count("not_stored")
            await self._release(scope, owner)
            return response
        stored = snapshot(ex, response, settings.max_body_bytes)
        try:
            held = await self.store.complete(
                scope, owner=owner, response=stored, ttl_seconds=settings.ttl_seconds
            )
        except StoreUnavailable as exc:
            # The caller still gets its answer; the claim lapses with its lease.
            self.count("store_error")
            self.store_warning("idempotency_store_unavailable", exc)
            return response
        if held:
            self.count("stored")
        else:
            self.count("lease_lost")
            self.logger.event(
                "idempotency_lease_lost",
                level="warning",
                request_id=ex.request_id,
                vendor=self.vendor.name,
                key=scope.key,
                detail="the answer was not stored: the claim expired or was taken over while the request ran",
            )
        return response

    async def _release(self, scope: IdempotencyKey, owner: str) -> None:
        try:
            await self.store.release(scope, owner=owner)
        except StoreUnavailable as exc:
            self.store_warning("idempotency_store_unavailable", exc)  # the lease will lapse instead


def snapshot(ex: Exchange, response: Answer, max_body_bytes: int) -> StoredResponse:
    headers = tuple((k, v) for k, v in response.headers.items() if k.lower() not in NOT_STORED)
    body: bytes | None = None  # None: too large to keep (it streams)
    if response.stream is None:
        raw = response.body or b""
        if len(raw) <= max_body_bytes:
            body = raw
    return StoredResponse(status=response.status, headers=headers, body=body)


def replay(ex: Exchange, stored: StoredResponse) -> Answer:
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in stored.headers if k.lower() not in COOKIE_FIELDS
    )
    headers[REPLAYED_HEADER] = "true"
    headers["X-Request-Id"] = ex.request_id
    ex.bytes_out = len(stored.body or b"")
    return Answer(status=stored.status, headers=headers, body=stored.body, obs_text=has_obs_text(headers))


def idempotency_stage(vendor: Vendor, route: Route | None, services: Services) -> IdempotencyStage | None:
    """The stage for a route, or None when idempotency can never apply there (GET stays free)."""
    mode = route.idempotency if route is not None else None
    if mode == "off":
        return None
    if mode is not None:
        return IdempotencyStage(vendor, mode, services)
    method = route.method if route is not None else "*"
    if method != "*" and method not in IDEMPOTENCY_DEFAULT_METHODS:
        return None
    return IdempotencyStage(vendor, "optional", services, methods=IDEMPOTENCY_DEFAULT_METHODS)
