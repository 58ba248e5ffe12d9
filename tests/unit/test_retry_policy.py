"""The retry policy's pieces: which requests are safe to repeat, the full-jitter backoff, the budget."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from gateway.config import Retry
from gateway.errors import BadGateway, GatewayTimeout, ServiceUnavailable, VendorUnreachable
from gateway.features.retry.policy import RetryBudget, backoff, retry_reason, safe_to_repeat


@pytest.mark.parametrize(
    ("method", "forwarded", "safe"),
    [
        ("GET", False, True),
        ("HEAD", False, True),
        ("OPTIONS", False, True),
        ("PUT", False, True),
        ("DELETE", False, True),
        ("POST", False, False),
        ("PATCH", False, False),
        ("POST", True, True),
        ("PATCH", True, True),
    ],
)
def test_safe_to_repeat(method: str, forwarded: bool, safe: bool) -> None:
    assert safe_to_repeat(method, forwarded) is safe


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    retry = Retry(base_delay_seconds=0.1, max_delay_seconds=1.0)
    rng = random.Random(7)
    for n, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (50, 1.0), (1000, 1.0)):
        draws = [backoff(retry, n, rng) for _ in range(2000)]
        assert min(draws) >= 0 and max(draws) <= cap
        # Uniform over [0, cap]: mean near cap/2, and both ends of the range are used.
        assert statistics.mean(draws) == pytest.approx(cap / 2, rel=0.08)
        assert min(draws) < cap * 0.05 and max(draws) > cap * 0.95


def test_zero_base_delay_means_no_wait() -> None:
    assert backoff(Retry(base_delay_seconds=0, max_delay_seconds=0), 3) == 0


def test_retry_reasons() -> None:
    assert retry_reason(VendorUnreachable("x")) == "connection"
    assert retry_reason(GatewayTimeout("x")) == "timeout"
    assert retry_reason(BadGateway("answer too large")) is None
    assert retry_reason(ServiceUnavailable("store down")) is None


def test_budget_allows_a_ratio_of_recent_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0)
    now = 1000.0
    for _ in range(100):
        budget.request(now)
    allowed = sum(budget.try_spend(now) for _ in range(50))
    assert allowed == 20


def test_budget_floor_lets_a_quiet_vendor_retry() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0)
    budget.request(5.0)
    assert [budget.try_spend(5.0) for _ in range(12)] == [True] * 10 + [False] * 2


def test_budget_window_slides() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0)
    for _ in range(10):
        budget.request(100.0)
    assert sum(budget.try_spend(100.5) for _ in range(10)) == 5
    assert not budget.try_spend(109.5)  # still inside the 10 s window
    # Ten seconds on, the old requests and retries have left the window; new requests earn new retries.
    for _ in range(4):
        budget.request(110.5)
    assert sum(budget.try_spend(110.5) for _ in range(4)) == 2


@pytest.mark.parametrize(
    ("rate_limit", "cap"),
    [("", 60.0), ("rate_limit = { requests = 10, per_seconds = 1, max_pause_seconds = 5 }", 5.0)],
)
def test_a_deliverys_wait_for_retry_after_is_capped_as_a_vendor_pause(
    write_config: Any, rate_limit: str, cap: float
) -> None:
    from multidict import CIMultiDict

    from gateway.config import load_config
    from gateway.features.delivery.workers import classify
    from gateway.messages import Answer

    vendor = load_config(
        write_config(f'[vendors.v]\nbase_url = "http://127.0.0.1:1"\n{rate_limit}\n')
    ).vendors["v"]
    answer = Answer(status=503, headers=CIMultiDict({"Retry-After": "1000000000"}))
    outcome = classify(vendor, None, answer, None, called=True)  # type: ignore[arg-type]
    assert (outcome.kind, outcome.wait) == ("retry", cap)
    answer = Answer(status=503, headers=CIMultiDict({"Retry-After": "2"}))
    assert classify(vendor, None, answer, None, called=True).wait == 2.0  # type: ignore[arg-type]
