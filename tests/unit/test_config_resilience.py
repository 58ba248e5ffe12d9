"""Config for retries, circuit breakers and async delivery: defaults, values, and every problem with its
file and key path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Circuit, ConfigError, DeliverySettings, Retry, load_config

VENDOR = '[vendors.stripe]\nbase_url = "https://api.stripe.com"\n'


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_defaults_follow_the_spec(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(VENDOR))
    vendor = config.vendors["stripe"]
    assert vendor.retry == Retry(
        attempts=3,
        base_delay_seconds=0.1,
        max_delay_seconds=5.0,
        retry_on=frozenset({429, 502, 503, 504}),
        budget_ratio=0.2,
        budget_min_per_second=1.0,
    )
    # Every vendor has a breaker unless it turns it off.
    assert vendor.circuit == Circuit(
        enabled=True, failure_ratio=0.5, min_requests=20, window_seconds=10.0, open_seconds=30.0
    )
    assert config.delivery == DeliverySettings(
        workers=8, max_attempts=10, claim_after_seconds=30.0, keep_seconds=86400.0
    )


def test_values_load(write_config: Callable[..., Path]) -> None:
    path = write_config(
        """
        [delivery]
        workers = 2
        max_attempts = 5
        claim_after_seconds = 12.5
        keep_seconds = 60

        [vendors.stripe]
        base_url = "https://api.stripe.com"
        retry = { attempts = 5, base_delay_seconds = 0.2, max_delay_seconds = 2, retry_on = [500, 503], budget_ratio = 0.5, budget_min_per_second = 0 }
        circuit = { failure_ratio = 0.25, min_requests = 5, window_seconds = 2, open_seconds = 1 }

        [vendors.quiet]
        base_url = "https://quiet.example"
        circuit = { enabled = false }
        """,
        routes={
            "stripe": """
            vendor = "stripe"
            expose = "all"
            [[route]]
            method = "POST"
            path = "/v1/charges"
            delivery = "async"
            [[route]]
            path = "/v1/refunds"
            delivery = "prefer"
            """
        },
    )
    config = load_config(path)
    stripe = config.vendors["stripe"]
    assert stripe.retry == Retry(
        attempts=5,
        base_delay_seconds=0.2,
        max_delay_seconds=2.0,
        retry_on=frozenset({500, 503}),
        budget_ratio=0.5,
        budget_min_per_second=0.0,
    )
    assert stripe.circuit == Circuit(failure_ratio=0.25, min_requests=5, window_seconds=2.0, open_seconds=1.0)
    assert not config.vendors["quiet"].circuit.enabled
    assert [r.delivery for r in stripe.routes] == ["async", "prefer"]
    assert config.delivery == DeliverySettings(
        workers=2, max_attempts=5, claim_after_seconds=12.5, keep_seconds=60.0
    )
    # Async routes on the memory store are accepted, with a warning: the queue dies with the process.
    warnings = [str(w) for w in config.warnings]
    assert any("route[1].delivery" in w and "memory://" in w for w in warnings)
    assert any("route[2].delivery" in w for w in warnings)


def test_every_problem_is_named_with_its_key_path(write_config: Callable[..., Path]) -> None:
    path = write_config(
        """
        [delivery]
        workers = 0
        claim_after_seconds = -1
        sideways = true

        [vendors.stripe]
        base_url = "https://api.stripe.com"
        retry = { attempts = 0, base_delay_seconds = 2, max_delay_seconds = 1, retry_on = [200, "503", 503], budget_ratio = -1, typo = 1 }
        circuit = { failure_ratio = 1.5, min_requests = 0, window_seconds = 0, enabled = "no" }
        """,
        routes={
            "stripe": """
            vendor = "stripe"
            [[route]]
            path = "/x"
            delivery = "later"
            """
        },
    )
    found = problems(path)
    expected = [
        "delivery.workers: must be at least 1, not 0",
        "delivery.claim_after_seconds: must be greater than 0, not -1",
        "delivery.sideways: unknown key; expected one of claim_after_seconds, keep_seconds, max_attempts, publish, workers",
        "vendors.stripe.retry.attempts: must be at least 1, not 0",
        "vendors.stripe.retry.max_delay_seconds: must be at least base_delay_seconds (2), not 1",
        "vendors.stripe.retry.retry_on[1]: must be a 4xx or 5xx status code, not 200",
        "vendors.stripe.retry.retry_on[2]: must be a 4xx or 5xx status code, not '503'",
        "vendors.stripe.retry.budget_ratio: must not be negative, not -1",
        "vendors.stripe.retry.typo: unknown key; expected one of attempts, base_delay_seconds, budget_min_per_second, budget_ratio, max_delay_seconds, retry_on",
        "vendors.stripe.circuit.failure_ratio: must be greater than 0 and at most 1, not 1.5",
        "vendors.stripe.circuit.min_requests: must be at least 1, not 0",
        "vendors.stripe.circuit.window_seconds: must be greater than 0, not 0",
        "vendors.stripe.circuit.enabled: must be true or false, not a string",
    ]
    for message in expected:
        assert f"{path}: {message}" in found, (message, found)
    routes_file = path.parent / "routes" / "stripe.toml"
    assert f"{routes_file}: route[1].delivery: must be one of 'sync', 'async', 'prefer', not 'later'" in found
    assert not any("not supported by this build" in line for line in found)
