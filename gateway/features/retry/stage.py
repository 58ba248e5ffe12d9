"""The retry stage (docs/configuration.md): send a request again when that is safe and likely to help.

Placed before the circuit breaker and the rate limit, so every attempt asks the breaker, takes its own
rate-limit turn and obeys a vendor pause. The policy (``gateway.features.retry.policy``): requests safe to
repeat (GET, HEAD, OPTIONS, PUT, DELETE; POST and PATCH only with the key under a ``forward_header``),
retried after a connection error, a timeout or a ``retry_on`` status, with full-jitter backoff and at least
the vendor's ``Retry-After``, at most ``attempts`` tries in all, within the vendor's ``timeout.total_seconds``
counted from the first try (``Exchange.deadline``: the forwarder cuts each attempt to what is left), and
within the vendor's retry budget.

Nothing reaches the caller before the decision: the body is read once and resent from memory
(``Exchange.read_body``, bounded by ``max_body_bytes``), and the forwarder returns answers with a
``retry_on`` status whole (``Exchange.retry_statuses``). An answer too large
for that streams to the caller and is not retried. When no retry is sent (no attempts left, the wait
would pass the deadline, the budget is spent, or the gateway refused the next attempt itself: rate
limit, open circuit) the caller gets the last vendor answer, or the last error, as it was.

A vendor with ``retry.attempts = 1`` gets no stage at all.
"""

from __future__ import annotations

import asyncio
import time

from ...config import Vendor
from ...errors import GatewayError
from ...messages import Answer
from ...pipeline import Exchange, Handler
from ...services import Services
from ..ratelimit.policy import parse_retry_after
from .policy import Retries, backoff, retry_reason, safe_to_repeat

# A retry is not sent when less than this would be left of the deadline once its wait is over.
MIN_ATTEMPT_SECONDS = 0.05


class RetryStage:
    def __init__(self, vendor: Vendor, services: Services) -> None:
        self.vendor = vendor.name
        self.policy = vendor.retry
        self.retry_on = vendor.retry.retry_on
        self.total_seconds = vendor.timeout.total_seconds
        self.registry: Retries = services.retries
        self.budget = services.retries.budget(vendor)

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        self.budget.request()
        if not safe_to_repeat(ex.method, ex.idempotency_forwarded):
            return await call_next(ex)
        if ex.body is None and ex.request.has_body:
            await ex.read_body()  # before the deadline starts: the caller's upload is not the vendor's time
        deadline = time.perf_counter() + self.total_seconds
        ex.deadline = deadline if ex.deadline is None else min(ex.deadline, deadline)
        ex.retry_statuses = self.retry_on
        attempt = 1
        last: Answer | GatewayError | None = None
        while True:
            before = ex.attempts
            wait_at_least = 0.0
            try:
                response = await call_next(ex)
            except GatewayError as exc:
                reason = retry_reason(exc) if ex.attempts > before else None
                if reason is None:
                    # Not the vendor failing: a refusal of the gateway's own (rate limit, open circuit,
                    # no time left). After an earlier attempt, the vendor's last answer says more.
                    if last is None:
                        raise
                    return self._give_up(last)
                last = exc
            else:
                if response.status not in self.retry_on or not response.whole:
                    return response
                reason = str(response.status)
                wait_at_least = parse_retry_after(response.headers.get("Retry-After")) or 0.0
                last = response
            if attempt >= self.policy.attempts:
                self.registry.withheld[(self.vendor, "attempts")] += 1
                return self._give_up(last)
            delay = max(backoff(self.policy, attempt), wait_at_least)
            if time.perf_counter() + delay + MIN_ATTEMPT_SECONDS > ex.deadline:
                self.registry.withheld[(self.vendor, "deadline")] += 1
                return self._give_up(last)
            if not self.budget.try_spend():
                self.registry.withheld[(self.vendor, "budget")] += 1
                return self._give_up(last)
            self.registry.sent[(self.vendor, reason)] += 1
            if delay > 0:
                await asyncio.sleep(delay)
            attempt += 1

    @staticmethod
    def _give_up(last: Answer | GatewayError) -> Answer:
        if isinstance(last, GatewayError):
            raise last
        return last


def retry_stage(vendor: Vendor, services: Services) -> RetryStage | None:
    return RetryStage(vendor, services) if vendor.retry.attempts > 1 else None
