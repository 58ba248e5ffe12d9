"""The limiter one piece at a time: the GCRA rule, Retry-After parsing, headers, queue order, pauses."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.config import ConfigError, RateLimit, Vendor, load_config
from gateway.features.ratelimit.policy import (
    MAX_RETRY_AFTER_SECONDS,
    Limiter,
    LimitSettings,
    RateLimited,
    RateLimits,
    parse_retry_after,
    policy_header,
)
from gateway.features.ratelimit.store import MemoryRates, RateBucket, gcra, gcra_pause
from gateway.observability.logging import Logger
from tests.manual_clock import ManualClock


def rate(
    requests: int, per: float = 1.0, *, burst: int = 1, wait: float = 1.0, queue: int = 100
) -> RateLimit:
    return RateLimit(requests=requests, per_seconds=per, max_wait_seconds=wait, burst=burst, max_queue=queue)


def limiter(limit: RateLimit | None = None, concurrency: int | None = None, policy: str = "v") -> Limiter:
    registry = RateLimits(MemoryRates(), Logger(stream=io.BytesIO()))
    settings = LimitSettings(policy=policy, rate=limit, concurrency=concurrency)
    return Limiter(settings, registry.store, registry.logger, registry)


# -- the GCRA rule ------------------------------------------------------------------------------------


def test_gcra_lets_a_burst_through_then_paces() -> None:
    tat, now, interval = 0.0, 100.0, 0.1
    tolerance = (3 - 1) * interval  # burst of 3
    waits = []
    for _ in range(5):
        wait, new_tat = gcra(tat, now, interval, tolerance)
        waits.append(round(wait, 6))
        if wait == 0:
            tat = new_tat
    assert waits == [0, 0, 0, 0.1, 0.1]
    # Waiting the returned time makes the next one due; the schedule does not drift.
    wait, tat = gcra(tat, now + 0.1, interval, tolerance)
    assert wait == 0 and tat == pytest.approx(100.4)


def test_gcra_admits_a_whole_burst_at_one_instant_despite_float_rounding() -> None:
    # 1000 + 1/3 + 1/3 - 2/3 lands a hair after 1000: without slack the third of a burst of 3 waits ~1e-13 s.
    tat, now, interval = 0.0, 1000.0, 1 / 3
    for _ in range(3):
        wait, tat = gcra(tat, now, interval, 2 * interval)
        assert wait == 0
    assert gcra(tat, now, interval, 2 * interval)[0] == pytest.approx(interval)


def test_gcra_pause_holds_then_resumes_at_the_pace_without_a_burst() -> None:
    interval, tolerance = 0.1, 0.9  # burst 10
    tat = gcra_pause(0.0, 100.0, 2.0, tolerance)
    assert gcra(tat, 101.9, interval, tolerance)[0] == pytest.approx(0.1)
    wait, tat = gcra(tat, 102.0, interval, tolerance)
    assert wait == 0
    assert gcra(tat, 102.0, interval, tolerance)[0] == pytest.approx(0.1)  # no burst saved up
    # A pause that ends before the next turn is due changes nothing.
    assert gcra_pause(tat, 102.0, 0.05, tolerance) == tat


# -- Retry-After and the ratelimit headers ------------------------------------------------------------


def test_retry_after_seconds_and_http_dates() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    later = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(30, abs=1)
    earlier = format_datetime(datetime.fromtimestamp(now, UTC) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0
    for bad in (None, "", "-1", "1.5", "soon", "Mon, 99 Foo 2024 00:00:00 GMT"):
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize(
    "value",
    [
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0663",  # Arabic-Indic three: int() would read it; RFC 9110 delay-seconds are ASCII digits
        "\uff17",  # fullwidth seven
        "1\u00b2",
        "1e3",
        "+5",
        "0x10",
        "5 s",
        "Mon, \u0660\u0661 Jan 2024 00:00:00 GMT",  # a date with non-ASCII digits
        "\udcff",  # a vendor byte that is not UTF-8 (the pool decodes with surrogateescape)
    ],
)
def test_retry_after_that_is_not_ascii_delay_seconds_or_a_date_is_ignored(value: str) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_with_any_number_of_digits_is_read_capped() -> None:
    assert parse_retry_after("1000000000") == 1e9
    assert parse_retry_after("0" * 50 + "7") == 7.0
    assert parse_retry_after("9" * 400) == MAX_RETRY_AFTER_SECONDS  # float(int(...)) overflowed: a 500
    assert parse_retry_after("9" * 5000) == MAX_RETRY_AFTER_SECONDS  # past int()'s digit limit
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=0.0) == MAX_RETRY_AFTER_SECONDS


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789 \t", max_size=600),
        st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
        st.datetimes(timezones=st.timezones()).map(lambda d: format_datetime(d)),
        st.from_regex(r"\A[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} \d{1,5} \d\d:\d\d:\d\d [+-]?\w{1,5}\Z"),
    ),
    st.floats(min_value=-1e12, max_value=1e12),
)
def test_retry_after_parsing_never_raises(value: str, now: float) -> None:
    seconds = parse_retry_after(value, now=now)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_SECONDS


def test_policy_header_states_the_limit_in_whole_seconds() -> None:
    assert policy_header(LimitSettings(policy="stripe", rate=rate(100))) == '"stripe";q=100;w=1'
    assert policy_header(LimitSettings(policy="x", rate=rate(5, 0.5))) == '"x";q=10;w=1'
    assert policy_header(LimitSettings(policy="x", rate=rate(1000, 3600))) == '"x";q=1000;w=3600'
    assert policy_header(LimitSettings(policy="v", concurrency=8)) == '"v";q=8;qu="concurrent-requests"'
    assert policy_header(LimitSettings(policy='a"b\\c', rate=rate(1))) == '"a\\"b\\\\c";q=1;w=1'


# -- the queue ----------------------------------------------------------------------------------------


async def test_a_free_turn_goes_without_a_task() -> None:
    lim = limiter(rate(10, burst=2))
    assert await lim.acquire(None, time.monotonic() + 1) is False
    assert await lim.acquire(None, time.monotonic() + 1) is False
    assert lim._task is None and lim.depth == 0


async def test_fifo_within_a_caller_round_robin_between_callers() -> None:
    lim = limiter(rate(50, burst=1, wait=3))  # one turn every 20 ms
    order: list[str] = []

    async def one(client: str, tag: str) -> None:
        await lim.acquire(client, time.monotonic() + 3)
        order.append(tag)

    tasks = [asyncio.ensure_future(one("a", f"a{i}")) for i in range(6)]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(one("b", f"b{i}")) for i in range(2)]
    await asyncio.gather(*tasks)
    assert order == ["a0", "a1", "b0", "a2", "b1", "a3", "a4", "a5"]


async def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    lim = limiter(rate(1, 10, burst=1, wait=5))
    await lim.acquire(None, time.monotonic() + 1)
    waiter = asyncio.ensure_future(lim.acquire(None, time.monotonic() + 5))
    await asyncio.sleep(0.01)
    assert lim.depth == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lim.depth == 0
    await asyncio.sleep(0.01)
    assert lim._task is None  # the dispatcher stopped instead of sleeping 10 s for nobody


async def test_timeout_refusal_says_when_to_come_back() -> None:
    lim = limiter(rate(2, burst=1, wait=0.1))
    await lim.acquire(None, time.monotonic() + 0.1)
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await lim.acquire(None, time.monotonic() + 0.1)
    assert 0.08 <= time.monotonic() - started < 0.5
    assert caught.value.reason == "timeout"
    assert caught.value.headers["Retry-After"] == "1"
    assert caught.value.headers["RateLimit"] == '"v";r=0;t=1'


async def test_concurrency_slots_are_handed_on_release() -> None:
    lim = limiter(concurrency=2)
    assert await lim.acquire(None, time.monotonic() + 1) is True
    assert await lim.acquire(None, time.monotonic() + 1) is True
    third = asyncio.ensure_future(lim.acquire(None, time.monotonic() + 1))
    await asyncio.sleep(0.02)
    assert not third.done() and lim.in_flight == 2
    lim.release()
    assert await third is True
    assert lim.in_flight == 2


async def test_reconfigure_keeps_the_queue_and_applies_the_new_pace() -> None:
    lim = limiter(rate(1, 10, burst=1, wait=5))
    await lim.acquire(None, time.monotonic() + 1)
    waiter = asyncio.ensure_future(lim.acquire(None, time.monotonic() + 5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    lim.configure(LimitSettings(policy="v", rate=rate(100, burst=1, wait=5)))
    await waiter  # served at the new pace, not after the old 10 s
    assert time.monotonic() - started < 0.5


async def test_pause_holds_new_turns_and_refuses_those_that_cannot_wait_it_out() -> None:
    lim = limiter(rate(100, burst=10, wait=2))
    assert lim.pause(0.3) is True
    assert lim.pause(0.1) is False  # already paused for longer
    with pytest.raises(RateLimited) as caught:
        await lim.acquire(None, time.monotonic() + 0.1)
    assert caught.value.reason == "paused"
    started = time.monotonic()
    await lim.acquire(None, time.monotonic() + 2)
    assert time.monotonic() - started >= 0.25


@pytest.mark.parametrize(("max_pause", "expected"), [(5.0, "5"), (None, "60")])
async def test_a_vendor_pause_is_capped_at_max_pause_seconds(max_pause: float | None, expected: str) -> None:
    limit = rate(10) if max_pause is None else dataclasses.replace(rate(10), max_pause_seconds=max_pause)
    for lim in (limiter(limit), limiter(concurrency=2) if max_pause is None else limiter(limit)):
        lim._registry.clock = ManualClock()
        assert lim.pause(1e9) is True
        with pytest.raises(RateLimited) as caught:
            await lim.acquire(None, lim._registry.clock.now() + 1)
        assert caught.value.reason == "paused"
        assert caught.value.headers["Retry-After"] == expected


async def test_registry_keeps_a_limiter_across_reloads() -> None:
    registry = RateLimits(MemoryRates(), Logger(stream=io.BytesIO()))
    vendor = Vendor(name="v", base_url=URL("http://x"), rate_limit=rate(10))
    first = registry.vendor(vendor)
    again = registry.vendor(vendor)
    assert again is first
    faster = registry.vendor(Vendor(name="v", base_url=URL("http://x"), rate_limit=rate(20)))
    assert faster is first and first.settings.rate == rate(10)  # prepared, not yet in force
    registry.commit()
    assert first.settings.rate == rate(20)


# -- store operations ---------------------------------------------------------------------------------


async def test_memory_rates_run_the_same_schedule() -> None:
    store = MemoryRates()
    bucket = RateBucket(tag="v", name="vendor", interval_seconds=0.1, burst=2)
    assert [await store.take(bucket) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1, abs=0.01)]
    await store.pause(bucket, 1.0)
    assert await store.take(bucket) == pytest.approx(1.0, abs=0.02)


@pytest.mark.redis
async def test_redis_store_shares_one_schedule_between_connections(redis_server: Any) -> None:
    from gateway.features.ratelimit.redis_store import rate_key
    from gateway.store.redis import RedisStore

    stores = RedisStore(redis_server.url), RedisStore(redis_server.url)
    one, two = (store.rates for store in stores)
    redis = stores[0].connection.redis
    try:
        bucket = RateBucket(tag="stripe", name="vendor", interval_seconds=0.1, burst=2)
        assert rate_key(bucket) == "gw:rl:{stripe}:vendor"
        assert await one.take(bucket) == 0.0
        assert await two.take(bucket) == 0.0
        assert await one.take(bucket) == pytest.approx(0.1, abs=0.02)  # the burst is spent by both
        await two.pause(bucket, 1.0)
        assert await one.take(bucket) == pytest.approx(1.0, abs=0.05)
        ttl = await redis.pttl(rate_key(bucket))
        assert 0 < ttl <= 3000  # forgotten once idle
        await redis.script_flush()  # NOSCRIPT: the script is loaded again
        assert await one.take(bucket) > 0
    finally:
        for store in stores:
            await store.close()


# -- config -------------------------------------------------------------------------------------------


def test_config_defaults_and_every_problem(write_config: Callable[..., Path]) -> None:
    path = write_config(
        """
[vendors.ok]
base_url = "http://127.0.0.1:1"
rate_limit = { requests = 20, max_wait_seconds = 2.5 }
concurrency = 4

[vendors.bad]
base_url = "http://127.0.0.1:1"
rate_limit = { requests = 0, per_seconds = 0, max_wait_seconds = -1, scope = "galaxy", burst = 0, max_queue = -1, max_pause_seconds = 0, typo = 1 }
concurrency = 0
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = {str(p).split(": ", 1)[1] for p in caught.value.problems}
    assert problems == {
        "vendors.bad.rate_limit.requests: must be at least 1, not 0",
        "vendors.bad.rate_limit.per_seconds: must be greater than 0, not 0",
        "vendors.bad.rate_limit.max_wait_seconds: must not be negative, not -1",
        "vendors.bad.rate_limit.scope: must be one of 'local', 'global', not 'galaxy'",
        "vendors.bad.rate_limit.burst: must be at least 1, not 0",
        "vendors.bad.rate_limit.max_queue: must be at least 0, not -1",
        "vendors.bad.rate_limit.max_pause_seconds: must be greater than 0, not 0",
        "vendors.bad.rate_limit.typo: unknown key; expected one of burst, max_pause_seconds, max_queue, max_wait_seconds, per_seconds, requests, scope",
        "vendors.bad.concurrency: must be at least 1, not 0",
    }
    path.write_text(path.read_text().split("[vendors.bad]")[0])
    vendor = load_config(path).vendors["ok"]
    assert vendor.concurrency == 4
    assert vendor.rate_limit == RateLimit(
        requests=20, per_seconds=1.0, max_wait_seconds=2.5, scope="local", burst=20, max_queue=50
    )
    assert vendor.rate_limit.max_pause_seconds == 60.0


def test_max_pause_seconds_is_a_vendor_setting(write_config: Callable[..., Path]) -> None:
    path = write_config(
        """
[vendors.v]
base_url = "http://127.0.0.1:1"
rate_limit = { requests = 20, max_pause_seconds = 2.5 }

[clients.c]
key = "env:HOME"
allow = ["v"]
rate_limit = { requests = 1, max_pause_seconds = 5 }
""",
        routes={
            "v": 'vendor = "v"\n[[route]]\nmethod = "GET"\npath = "/x"\nrate_limit = { requests = 1, max_pause_seconds = "x" }\n'
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = {str(p).split(": ", 1)[1] for p in caught.value.problems}
    only_vendors = "only a vendor's rate_limit has this (a vendor's pause holds the vendor's queue)"
    assert problems == {
        f"clients.c.rate_limit.max_pause_seconds: {only_vendors}",
        f"route[1].rate_limit.max_pause_seconds: {only_vendors}",
    }
    path.write_text(path.read_text().split("[clients.c]")[0])
    (path.parent / "routes" / "v.toml").unlink()
    rate_limit = load_config(path).vendors["v"].rate_limit
    assert rate_limit is not None and rate_limit.max_pause_seconds == 2.5


def test_route_and_client_limits_and_the_global_on_memory_warning(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RL_KEY", "a-key-for-tests")
    path = write_config(
        """
[clients.billing]
key = "env:RL_KEY"
allow = ["v"]
rate_limit = { requests = 5, per_seconds = 2, scope = "global" }

[vendors.v]
base_url = "http://127.0.0.1:1"
rate_limit = { requests = 10, scope = "global" }
""",
        routes={
            "v": """
vendor = "v"
[[route]]
method = "GET"
path = "/x"
rate_limit = { requests = 1, per_seconds = "often" }
"""
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.key for p in caught.value.problems] == ["route[1].rate_limit.per_seconds"]
    (path.parent / "routes" / "v.toml").write_text(
        'vendor = "v"\n[[route]]\nmethod = "GET"\npath = "/x"\nrate_limit = { requests = 1, scope = "global" }\n'
    )
    config = load_config(path)
    assert config.clients["billing"].rate_limit == RateLimit(
        requests=5, per_seconds=2.0, scope="global", burst=5, max_queue=3
    )
    assert config.vendors["v"].routes[0].rate_limit is not None
    keys = {w.key for w in config.warnings}
    assert keys >= {
        "vendors.v.rate_limit.scope",
        "clients.billing.rate_limit.scope",
        "route[1].rate_limit.scope",
    }


async def test_a_limiter_without_limits_still_holds_a_vendor_pause() -> None:
    lim = limiter()  # a vendor with no limits of its own, in a config with client quotas
    assert lim.pause(0.2)
    started = time.monotonic()
    assert await lim.acquire(None, time.monotonic() + 1) is False
    assert time.monotonic() - started >= 0.15
    lim.pause(5)
    with pytest.raises(RateLimited) as caught:
        await lim.acquire(None, time.monotonic() + 1)
    assert caught.value.headers["RateLimit-Policy"] == '"v";q=0;w=5'
    assert caught.value.headers["RateLimit"] == '"v";r=0;t=5'
