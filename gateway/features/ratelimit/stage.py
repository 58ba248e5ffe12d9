"""The rate-limit stage: the last stage before the forwarder (docs/configuration.md).

A request waits for its turn from the limits that apply to it, in this order: its caller's quota
(``[clients.NAME] rate_limit``), its route's ``rate_limit``, its vendor's ``rate_limit`` and
``concurrency``. Each limit has its own ``max_wait_seconds``, counted from when the request reached this
stage, so the waits overlap rather than add up. A refusal is a 429 (``ratelimit.RateLimited``).

After the vendor answers, a 429 or 503 with ``Retry-After`` (seconds or an HTTP-date) pauses the vendor's
queue for every caller until then, for at most the vendor's ``rate_limit.max_pause_seconds`` (a longer
ask is logged as ``vendor_pause_capped``), via ``Limiter.pause`` (for every replica with a global limit);
an unreadable Retry-After is no Retry-After. Whether the
request itself is sent again is the retry stage's decision (``gateway.features.retry.stage``, placed before
this one, so each retry takes a turn here and waits out the pause like everyone else).

A vendor without ``rate_limit``, ``concurrency`` or limited routes, with no client quotas configured,
gets no stage at all (and so no pauses either).
"""

from __future__ import annotations

from collections.abc import Mapping

from ...config import Config, Route, Vendor
from ...messages import Answer
from ...pipeline import Exchange, Handler
from ...services import Services
from .policy import Limiter, RateLimited, RateLimits, parse_retry_after

PAUSING_STATUSES = frozenset({429, 503})


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
        # gateway_ratelimit_wait_seconds: a request that waited for nothing adds one to its first bucket.
        self.zero_waits = registry.waits(vendor.name).counts

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        held: list[Limiter] = []
        try:
            limiters = self.limiters
            if self.clients and ex.client is not None and (quota := self.clients.get(ex.client)) is not None:
                limiters = (quota, *limiters)
            now = self.registry.clock.now()
            for i, limiter in enumerate(limiters):
                slot = limiter.admit_now(now)
                if slot is None:  # this one queues: it and the rest wait their turn
                    await self._admit(ex, limiters[i:], held, now)
                    break
                if slot:
                    held.append(limiter)
            else:
                self.zero_waits[0] += 1
            response = await call_next(ex)
            if response.status in PAUSING_STATUSES:
                self._pause(ex, response)
            if response.stream is not None and held:
                # The vendor is still sending: the concurrency slots are held until the stream is done.
                _release_with(response, held)
                held = []
            return response
        finally:
            for limiter in held:
                limiter.release()

    async def _admit(
        self, ex: Exchange, limiters: tuple[Limiter, ...], held: list[Limiter], start: float
    ) -> None:
        clock = self.registry.clock
        try:
            for limiter in limiters:
                if await limiter.acquire(ex.client, start + limiter.settings.max_wait_seconds):
                    held.append(limiter)
        except RateLimited as exc:
            self.registry.count_rejection(self.vendor, exc.reason)
            raise
        self.registry.observe_wait(self.vendor, clock.now() - start)

    def _pause(self, ex: Exchange, response: Answer) -> float | None:
        """Hold the vendor's queue for the answer's Retry-After, at most the vendor's max_pause_seconds;
        the pause in seconds, or None (no Retry-After, an unreadable one, or 0)."""
        pause = parse_retry_after(response.headers.get("Retry-After"))
        if pause is None or pause <= 0:
            return None
        cap = self.vendor_limiter.settings.max_pause_seconds
        if pause > cap:
            self.logger.event(
                "vendor_pause_capped",
                level="warning",
                request_id=ex.request_id,
                vendor=self.vendor,
                status=response.status,
                asked_seconds=pause,
                max_pause_seconds=cap,
            )
            pause = cap
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


def _release_with(answer: Answer, limiters: list[Limiter]) -> None:
    """Release ``limiters`` when ``answer`` is discarded (its stream written or dropped)."""
    release = answer.release

    def done() -> None:
        if release is not None:
            release()
        for limiter in limiters:
            limiter.release()

    answer.release = done
