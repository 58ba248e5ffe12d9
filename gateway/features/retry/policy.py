"""The retry policy (docs/configuration.md): what may be sent again, how long to wait, and the retry budget.

Used by the retry stage (``gateway.features.retry.stage``: a caller waits while its request is retried) and by
the delivery workers (``gateway.features.delivery.workers``: a queued delivery is retried later), so both
follow one rule:

- only requests that are safe to repeat: GET, HEAD, OPTIONS, PUT and DELETE (idempotent by RFC 9110
  section 9.2.2), and POST or PATCH whose idempotency key goes to the vendor under its
  ``idempotency.forward_header`` (a caller's key passing as an ordinary header does not count);
- only after a connection error, a timeout, or a ``retry_on`` status (never another 4xx);
- after full-jitter exponential backoff (``backoff``), and no sooner than the vendor's ``Retry-After``;
- within a retry budget per vendor (``RetryBudget``): a vendor that fails everything sees at most
  ``budget_ratio`` more calls than it would without retries (plus a small floor per second, so a
  quiet vendor's occasional failure is still retried).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterator

from ...config import Retry, Vendor
from ...errors import GatewayError, GatewayTimeout, VendorUnreachable
from ...observability.metrics import Family

# RFC 9110 section 9.2.2: a vendor must treat these as idempotent, so sending one twice is safe.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_BUDGET_WINDOW_SECONDS = 10.0
_BUDGET_SLOTS = 10  # one-second slots over the window

_random = random.Random()


def safe_to_repeat(method: str, idempotency_forwarded: bool) -> bool:
    return method in IDEMPOTENT_METHODS or (method in ("POST", "PATCH") and idempotency_forwarded)


def backoff(retry: Retry, n: int, rng: random.Random = _random) -> float:
    """Seconds to wait before retry ``n`` (1 for the first): uniform in [0, min(max, base * 2**(n-1))]."""
    cap = min(retry.max_delay_seconds, retry.base_delay_seconds * 2.0 ** min(n - 1, 62))
    return rng.uniform(0.0, cap)


def retry_reason(error: GatewayError) -> str | None:
    """Why a gateway error from an attempt may be retried ("connection", "timeout"), or None."""
    if isinstance(error, VendorUnreachable):
        return "connection"
    if isinstance(error, GatewayTimeout):
        return "timeout"
    return None


class RetryBudget:
    """Retries allowed over the last ``RETRY_BUDGET_WINDOW_SECONDS``: ``ratio`` of the requests seen,
    plus ``min_per_second`` per second of the window. Counted in one-second slots (per process)."""

    __slots__ = ("_requests", "_retries", "_stamps", "min_per_second", "ratio")

    def __init__(self, ratio: float, min_per_second: float) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self._stamps = [-1] * _BUDGET_SLOTS
        self._requests = [0] * _BUDGET_SLOTS
        self._retries = [0] * _BUDGET_SLOTS

    def _slot(self, now: float) -> int:
        second = math.floor(now)
        slot = second % _BUDGET_SLOTS
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def request(self, now: float | None = None) -> None:
        """Count a first try."""
        self._requests[self._slot(time.monotonic() if now is None else now)] += 1

    def try_spend(self, now: float | None = None) -> bool:
        """Take one retry from the budget if there is one left."""
        now = time.monotonic() if now is None else now
        slot = self._slot(now)
        oldest = math.floor(now) - _BUDGET_SLOTS
        requests = retries = 0
        for i in range(_BUDGET_SLOTS):
            if self._stamps[i] > oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        allowed = self.ratio * requests + self.min_per_second * RETRY_BUDGET_WINDOW_SECONDS
        if retries + 1 > allowed + 1e-9:
            return False
        self._retries[slot] += 1
        return True


class Retries:
    """The app-wide retry budgets per vendor (kept across reloads) and the figures metrics export."""

    def __init__(self) -> None:
        self._budgets: dict[str, RetryBudget] = {}
        # (vendor, reason) -> retries sent: gateway_retries_total{vendor,reason}. Reasons: a status
        # code ("503"), "connection" or "timeout".
        self.sent: Counter[tuple[str, str]] = Counter()
        # (vendor, why) -> retries the policy wanted but did not send: "budget" (the retry budget was
        # spent), "deadline" (the wait would pass the vendor's total timeout), "attempts" (none left).
        self.withheld: Counter[tuple[str, str]] = Counter()

    def families(self) -> Iterator[Family]:
        yield Family(
            "gateway_retries",
            "Vendor calls sent again by the retry policy (callers' requests and deliveries), by vendor and "
            "reason: the status code, connection or timeout.",
            "counter",
            ("vendor", "reason"),
            self.sent,
        )

    def budget(self, vendor: Vendor) -> RetryBudget:
        retry = vendor.retry
        budget = self._budgets.get(vendor.name)
        if budget is None:
            budget = self._budgets[vendor.name] = RetryBudget(retry.budget_ratio, retry.budget_min_per_second)
        else:  # a reload: new limits, same recent history
            budget.ratio, budget.min_per_second = retry.budget_ratio, retry.budget_min_per_second
        return budget
