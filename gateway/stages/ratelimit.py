"""The rate-limit stage: the last stage before the forwarder (SPEC sections 4, 5, 7).

A request waits for its turn from the limits that apply to it, in this order: its caller's quota
(``[clients.NAME] rate_limit``), its route's ``rate_limit``, its vendor's ``rate_limit`` and
``concurrency``. Each limit has its own ``max_wait_seconds``, counted from when the request reached this
stage, so the waits overlap rather than add up. A refusal is a 429 (``ratelimit.RateLimited``).

After the vendor answers, a 429 or 503 with ``Retry-After`` (seconds or an HTTP-date) pauses the vendor's
queue for every caller until then (``Limiter.pause``; for every replica with a global limit). The request
itself is sent once more after the pause when that is safe and fits the vendor's ``timeout.total_seconds``:
an idempotent method (GET, HEAD, OPTIONS, PUT, DELETE), or POST/PATCH whose idempotency key is forwarded
to the vendor; a body the gateway still holds (none, buffered by an earlier stage, or up to
``RESEND_BODY_BYTES``, which this stage keeps for the purpose); and a vendor answer not yet sent on. Only
this one resend: the full retry policy (``[vendors.X] retry``) is separate work.

A vendor without ``rate_limit``, ``concurrency`` or limited routes, with no client quotas configured,
gets no stage at all (and so no pauses either).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiohttp import web

from ..config import Config, Route, Vendor
from ..pipeline import Exchange, Handler, Services
from ..ratelimit import Limiter, RateLimited, RateLimits, parse_retry_after

PAUSING_STATUSES = frozenset({429, 503})
# Methods a vendor must treat as idempotent (RFC 9110 section 9.2.2): safe to send twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# A request body up to this size is kept in memory so the request can be sent again after a pause;
# larger ones stream to the vendor and are never resent.
RESEND_BODY_BYTES = 64 * 1024


class RateLimitStage:
    def __init__(
        self, vendor: Vendor, route: Route | None, services: Services, clients: Mapping[str, Limiter]
    ) -> None:
        registry = services.ratelimits
        self.vendor = vendor.name
        self.registry: RateLimits = registry
        self.logger = services.logger
        self.vendor_limiter = registry.vendor(vendor)
        route_limiter = registry.route(vendor, route) if route is not None else None
        self.limiters: tuple[Limiter, ...] = (
            (route_limiter, self.vendor_limiter) if route_limiter is not None else (self.vendor_limiter,)
        )
        self.clients = dict(clients)
        self.total_seconds = vendor.timeout.total_seconds

    async def __call__(self, ex: Exchange, call_next: Handler) -> web.StreamResponse:
        held: list[Limiter] = []
        try:
            limiters = self.limiters
            if self.clients and ex.client is not None and (quota := self.clients.get(ex.client)) is not None:
                limiters = (quota, *limiters)
            await self._admit(ex, limiters, held)
            resendable = self._resendable(ex)
            if resendable and ex.body is None and ex.request.body_exists:
                length = ex.request.content_length
                if length is not None and length <= RESEND_BODY_BYTES:
                    await ex.read_body()
                else:
                    resendable = False
            response = await call_next(ex)
            if response.status in PAUSING_STATUSES:
                response = await self._vendor_said_wait(ex, call_next, response, held, resendable)
            return response
        finally:
            for limiter in held:
                limiter.release()

    async def _admit(self, ex: Exchange, limiters: tuple[Limiter, ...], held: list[Limiter]) -> None:
        start = time.monotonic()
        try:
            for limiter in limiters:
                if await limiter.acquire(ex.client, start + limiter.settings.max_wait_seconds):
                    held.append(limiter)
        except RateLimited as exc:
            self.registry.count_rejection(self.vendor, exc.reason)
            raise
        self.registry.observe_wait(self.vendor, time.monotonic() - start)

    def _resendable(self, ex: Exchange) -> bool:
        return ex.method in IDEMPOTENT_METHODS or (
            ex.method in ("POST", "PATCH") and ex.idempotency_forwarded
        )

    async def _vendor_said_wait(
        self,
        ex: Exchange,
        call_next: Handler,
        response: web.StreamResponse,
        held: list[Limiter],
        resendable: bool,
    ) -> web.StreamResponse:
        pause = self._pause(ex, response)
        if pause is None:
            return response
        limiter = self.vendor_limiter
        if not (
            resendable
            and isinstance(response, web.Response)
            and not response.prepared
            and (ex.body is not None or not ex.request.body_exists)
        ):
            return response
        if pause >= ex.started + self.total_seconds - time.perf_counter():  # Exchange.started's clock
            return response  # the pause outlasts the vendor's timeout: the caller gets the vendor's answer
        if limiter in held:
            held.remove(limiter)
            limiter.release()
        try:
            if await limiter.acquire(ex.client, time.monotonic() + pause + limiter.settings.max_wait_seconds):
                held.append(limiter)
        except RateLimited:
            return response  # no turn in time after the pause: the vendor's own 429 says why
        self.registry.retries[self.vendor] += 1
        again = await call_next(ex)
        if again.status in PAUSING_STATUSES:
            self._pause(ex, again)  # still too early: hold the queue again, but send no third time
        return again

    def _pause(self, ex: Exchange, response: web.StreamResponse) -> float | None:
        """Hold the vendor's queue for the answer's Retry-After; the pause in seconds, or None."""
        pause = parse_retry_after(response.headers.get("Retry-After"))
        if pause is None or pause <= 0:
            return None
        self.registry.pauses[self.vendor] += 1
        if self.vendor_limiter.pause(pause):
            self.logger.event(
                "vendor_paused",
                level="warning",
                request_id=ex.request_id,
                vendor=self.vendor,
                status=response.status,
                retry_after_seconds=round(pause, 3),
            )
        return pause


def ratelimit_stage(
    config: Config, vendor: Vendor, route: Route | None, services: Services
) -> RateLimitStage | None:
    """The stage for a handler, or None when no limit can apply to the vendor."""
    registry = services.ratelimits
    clients = {
        name: limiter
        for name, client in config.clients.items()
        if (limiter := registry.client(client)) is not None
    }
    if not (
        vendor.rate_limit is not None
        or vendor.concurrency is not None
        or clients
        or any(r.rate_limit is not None for r in vendor.routes)
    ):
        return None
    return RateLimitStage(vendor, route, services, clients)
