"""Delivery workers (docs/operations.md): every gateway process delivers from the shared queue.

One loop per process takes deliveries from the store (``delivery_take``) while it has free slots
(``[delivery] workers``) and runs each as a task. A delivery is one vendor call through the vendor's
circuit breaker, rate limits and forwarder (the same stages a caller's request passes, built per route
in ``runtime.build_runtime``), with ``Exchange.detached`` set: there is no caller connection, so the answer
comes back whole (up to ``DELIVERY_RESPONSE_BYTES``; the rest is dropped). Then, with the vendor's
retry policy (``gateway.features.retry.policy``):

- 2xx or 3xx: delivered; the answer is kept ``keep_seconds`` for ``GET /_gateway/deliveries/ID``;
- a connection error, a timeout or a ``retry_on`` status: tried again after full-jitter backoff (at
  least the vendor's ``Retry-After``), until ``[delivery] max_attempts`` vendor calls were made; then,
  or at once when the request is not safe to repeat (a POST/PATCH accepted while the vendor's config
  named no ``idempotency.forward_header``), it is dead;
- an open circuit or a full rate-limit queue: put back until then, without spending an attempt;
- any other answer (4xx, other 5xx) or error: dead at once (``delivery_dead_lettered``), answer kept.

The loop also reclaims deliveries left pending by a dead process (idle past ``claim_after_seconds``),
touches the ones its tasks hold so nobody reclaims them from a live process, moves due retries onto the
queue, and refreshes the queue and dead-letter depths for metrics. On shutdown it stops taking, lets
running deliveries finish within the drain time, and gives back the rest at once (``delivery_release``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from multidict import CIMultiDict, CIMultiDictProxy

from ...config import DEFAULT_MAX_PAUSE_SECONDS, Config, DeliverySettings, Route, Vendor
from ...errors import CircuitOpen, GatewayError, TooManyRequests
from ...messages import Answer, Request
from ...observability.logging import milliseconds
from ...pipeline import Exchange, Handler
from ...services import Services
from ...store import StoreUnavailable
from ...upstream.forwarder import COOKIE_FIELDS
from ..ratelimit.policy import parse_retry_after
from ..retry.policy import backoff, retry_reason, safe_to_repeat
from .events import DeliveryEvents
from .store import DeliveryRecord, DeliveryResponse, Lease

# Not kept with a delivery's answer: the id is the delivery attempt's, the cookies the vendor's own.
NOT_KEPT = COOKIE_FIELDS | {"x-request-id"}

# The most of a vendor's answer a delivery record keeps.
DELIVERY_RESPONSE_BYTES = 1024 * 1024
POLL_SECONDS = 0.2  # how often an idle loop looks at the shared queue (its own enqueues wake it at once)
DEPTH_REFRESH_SECONDS = 2.0
STORE_RETRY_SECONDS = 1.0  # the store failed: wait this long before asking again
# Waiting out an open circuit or a rate-limit queue: how long, when the refusal names no Retry-After.
DEFER_SECONDS = 1.0

# (vendor name, method, decoded segments) -> (vendor, route or None, handler), from the config in force.
HandlerLookup = Callable[[str, str, tuple[str, ...]], "tuple[Vendor, Route | None, Handler] | None"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["delivered", "retry", "defer", "dead"]
    error: str | None = None
    response: DeliveryResponse | None = None
    wait: float = 0.0  # at least this long before the next try (Retry-After)
    reason: str = ""


def classify(
    vendor: Vendor,
    record: DeliveryRecord,
    response: Answer | None,
    error: GatewayError | None,
    called: bool,
) -> Outcome:
    """What one delivery attempt came to."""
    retry_on = vendor.retry.retry_on
    if response is not None:
        answer = DeliveryResponse(
            status=response.status,
            headers=tuple((str(k), v) for k, v in response.headers.items() if k.lower() not in NOT_KEPT),
            body=response.body or b"",
        )
        if response.status < 400:
            return Outcome("delivered", response=answer)
        if response.status in retry_on:
            wait = parse_retry_after(response.headers.get("Retry-After")) or 0.0
            # As a vendor pause: one answer cannot put a delivery off for years.
            limits = vendor.rate_limit
            wait = min(wait, limits.max_pause_seconds if limits is not None else DEFAULT_MAX_PAUSE_SECONDS)
            return Outcome(
                "retry", f"vendor answered {response.status}", answer, wait=wait, reason=str(response.status)
            )
        return Outcome("dead", f"vendor answered {response.status}, which is not retried", answer)
    assert error is not None
    if not called and isinstance(error, CircuitOpen | TooManyRequests):
        wait = parse_retry_after(error.headers.get("Retry-After")) or DEFER_SECONDS
        return Outcome("defer", f"{error.status}: {error.detail}", wait=wait)
    reason = retry_reason(error)
    if reason is not None and called:
        return Outcome("retry", f"{error.status}: {error.detail}", reason=reason)
    return Outcome("dead", f"{error.status}: {error.detail}")


def not_repeated(vendor: Vendor, method: str) -> str:
    """Why a POST or PATCH delivery that failed is not sent again. The key the caller sent, if any,
    still reached the vendor as an ordinary header: what is missing is the vendor's forward_header."""
    why = (
        f"not retried: {method} is retried only when the vendor's config names "
        f"idempotency.forward_header, and vendors.{vendor.name}"
    )
    if vendor.idempotency.forward_header is None:
        return f"{why} names none"
    return f"{why} named none when this delivery was accepted"


class DeliveryWorkers:
    def __init__(self, services: Services, config: Callable[[], Config], handler_for: HandlerLookup) -> None:
        self.services = services
        self.store = services.store
        self.logger = services.logger
        self.deliveries = services.deliveries
        self._config = config
        self._handler_for = handler_for
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._active: dict[asyncio.Task[None], Lease] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._next_store_warning = 0.0
        self.events = DeliveryEvents(services, config)  # [delivery] publish

    @property
    def settings(self) -> DeliverySettings:
        return self._config().delivery

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def stop_taking(self) -> None:
        """Take no more deliveries; the ones running go on (shutdown has begun)."""
        self._stopping.set()
        self.deliveries.wake.set()

    async def stop(self, drain_seconds: float) -> None:
        """Stop taking work; let running deliveries finish for ``drain_seconds``; give back the rest."""
        deadline = time.monotonic() + drain_seconds
        self.stop_taking()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._active:
            await asyncio.wait(list(self._active), timeout=drain_seconds)
        unfinished = list(self._active.items())
        for task, _ in unfinished:
            task.cancel()
        await asyncio.gather(*(task for task, _ in unfinished), return_exceptions=True)
        for _, lease in unfinished:
            with contextlib.suppress(StoreUnavailable):
                await self.store.deliveries.delivery_release(lease)
        await self.events.stop(max(0.0, deadline - time.monotonic()))

    # -- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        last_reclaim = last_touch = last_depth = 0.0
        wake = self.deliveries.wake
        while not self._stopping.is_set():
            wake.clear()  # whatever set it is looked at now
            settings = self.settings
            now = time.monotonic()
            try:
                if now - last_touch >= settings.claim_after_seconds / 3 and self._active:
                    last_touch = now
                    await self.store.deliveries.delivery_touch(self.consumer, list(self._active.values()))
                if now - last_depth >= DEPTH_REFRESH_SECONDS:
                    last_depth = now
                    await self.deliveries.refresh()
                free = settings.workers - len(self._active)
                if free > 0:
                    reclaim = now - last_reclaim >= min(settings.claim_after_seconds / 4, 5.0)
                    if reclaim:
                        last_reclaim = now
                    leases = await self.store.deliveries.delivery_take(
                        self.consumer, free, claim_after_seconds=settings.claim_after_seconds, reclaim=reclaim
                    )
                    for lease in leases:
                        task = asyncio.get_running_loop().create_task(self._deliver(lease))
                        self._active[task] = lease
                        task.add_done_callback(self._done)
                    if len(leases) == free:
                        continue  # maybe more waiting: look again once a slot frees up
            except StoreUnavailable as exc:
                self._store_warning(exc)
                await self._sleep(STORE_RETRY_SECONDS)
                continue
            await self._sleep(POLL_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.deliveries.wake.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)
        self.deliveries.wake.set()  # a slot is free

    def _store_warning(self, exc: Exception) -> None:
        now = time.monotonic()
        if now >= self._next_store_warning:
            self._next_store_warning = now + 10.0
            self.logger.event("delivery_store_unavailable", level="error", error=str(exc))

    # -- one delivery -----------------------------------------------------------------------------

    async def _deliver(self, lease: Lease) -> None:
        try:
            record = await self.store.deliveries.delivery_start(lease)
            if record is None:
                return  # delivered or dead already (a duplicate), or purged
            await self._attempt(lease, record)
        except StoreUnavailable as exc:
            # The outcome could not be written: the delivery stays pending and is reclaimed later.
            self._store_warning(exc)
        except Exception as exc:
            self.logger.exception("delivery_failed", exc, delivery_id=lease.id)

    async def _attempt(self, lease: Lease, record: DeliveryRecord) -> None:
        req = record.request
        found = self._handler_for(req.vendor, req.method, req.segments)
        if found is None:
            gone = f"vendor {req.vendor!r} is no longer in the config"
            await self._dead(lease, record, record.attempts, Outcome("dead", gone))
            return
        vendor, route, handler = found
        headers: CIMultiDict[str] = CIMultiDict(req.headers)
        ex = Exchange(
            request=Request(method=req.method, headers=CIMultiDictProxy(headers), body=req.body),
            request_id=req.request_id,
            vendor=vendor,
            route=route,
            method=req.method,
            path=req.path,
            query=req.query or None,
            headers=headers,
            client=req.client,
            segments=req.segments,
            body=req.body,
            capture_response_bytes=DELIVERY_RESPONSE_BYTES,
            idempotency_key=req.idempotency_key,
            idempotency_forwarded=req.forward_header is not None,
            detached=True,
        )
        response: Answer | None = None
        error: GatewayError | None = None
        try:
            response = await handler(ex)
        except GatewayError as exc:
            error = exc
        self._access(record, ex, response.status if response is not None else error.status if error else 500)
        attempts = record.attempts + ex.attempts
        outcome = classify(vendor, record, response, error, called=ex.attempts > 0)
        if outcome.kind == "delivered":
            assert outcome.response is not None
            await self.store.deliveries.delivery_done(
                lease, attempts=attempts, response=outcome.response, keep_seconds=self.settings.keep_seconds
            )
            self.deliveries.delivered[req.vendor] += 1
            self.events.announce(
                replace(
                    record,
                    state="delivered",
                    attempts=attempts,
                    response=outcome.response,
                    next_attempt=None,
                    updated=time.time(),
                )
            )
            self.logger.event(
                "delivery_delivered",
                delivery_id=record.id,
                request_id=req.request_id,
                vendor=req.vendor,
                status=outcome.response.status,
                attempts=attempts,
            )
            return
        if outcome.kind == "defer":
            await self._retry(lease, record, attempts, outcome, outcome.wait)
            return
        if outcome.kind == "retry":
            if not safe_to_repeat(req.method, ex.idempotency_forwarded):
                why = f"{outcome.error}; {not_repeated(vendor, req.method)}"
                await self._dead(lease, record, attempts, Outcome("dead", why, outcome.response))
                return
            max_attempts = self.settings.max_attempts
            if attempts >= max_attempts:
                why = f"{outcome.error}; gave up after {attempts} attempts"
                await self._dead(lease, record, attempts, Outcome("dead", why, outcome.response))
                return
            delay = max(backoff(vendor.retry, max(1, attempts)), outcome.wait)
            self.services.retries.sent[(req.vendor, outcome.reason)] += 1
            await self._retry(lease, record, attempts, outcome, delay)
            return
        await self._dead(lease, record, attempts, outcome)

    def _access(self, record: DeliveryRecord, ex: Exchange, status: int) -> None:
        """An access record per delivery attempt, as a caller's request gets, with its delivery id."""
        req = record.request
        seconds = time.perf_counter() - ex.started
        self.logger.access(
            request_id=req.request_id,
            client=req.client,
            vendor=req.vendor,
            route=ex.route.path if ex.route else None,
            method=req.method,
            path=f"/{req.vendor}{req.path}",
            status=status,
            duration_ms=milliseconds(seconds),
            upstream_ms=milliseconds(ex.upstream_seconds),
            attempts=ex.attempts,
            bytes_in=ex.bytes_in,
            bytes_out=ex.bytes_out,
            delivery_id=record.id,
        )

    async def _retry(
        self, lease: Lease, record: DeliveryRecord, attempts: int, outcome: Outcome, delay: float
    ) -> None:
        await self.store.deliveries.delivery_retry(
            lease, attempts=attempts, error=outcome.error or "", delay_seconds=delay
        )
        self.deliveries.retried[record.request.vendor] += 1
        # Look again when it is due rather than at the next poll (another process may take it first).
        asyncio.get_running_loop().call_later(delay, self.deliveries.wake.set)

    async def _dead(self, lease: Lease, record: DeliveryRecord, attempts: int, outcome: Outcome) -> None:
        req = record.request
        error = outcome.error or "failed"
        await self.store.deliveries.delivery_dead(
            lease, attempts=attempts, error=error, response=outcome.response
        )
        self.deliveries.dead_lettered[req.vendor] += 1
        self.deliveries.dead[req.vendor] = self.deliveries.dead.get(req.vendor, 0) + 1
        self.events.announce(
            replace(
                record,
                state="dead",
                attempts=attempts,
                last_error=error,
                response=outcome.response,
                next_attempt=None,
                updated=time.time(),
            )
        )
        self.logger.event(
            "delivery_dead_lettered",
            level="warning",
            delivery_id=record.id,
            request_id=req.request_id,
            vendor=req.vendor,
            method=req.method,
            path=req.path,
            attempts=attempts,
            error=error,
        )
