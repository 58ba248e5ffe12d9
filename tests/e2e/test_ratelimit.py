"""Rate limits end to end, measured where it matters: the arrival times at a real local vendor.

Timing bounds leave room for a loaded 2-core machine: the pace comes from the gateway's schedule, which
catches up after a late wake-up, so what a slow box changes is mostly jitter, not the long-run rate.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from gateway.app import SERVICES
from tests.conftest import CapturedLogs
from tests.ratelimit_vendor import ARRIVALS, Arrivals, long_run_rate, max_in_window, rate_vendor


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RL_FLOOD_KEY", "flood-key-123")
    monkeypatch.setenv("RL_QUIET_KEY", "quiet-key-456")


def limited_config(server: Any, limit: str, extra: str = "", head: str = "") -> str:
    return f"""
{head}
[vendors.v]
base_url = "{server.make_url("/")}"
rate_limit = {{ {limit} }}
{extra}
"""


async def fire(client: Any, path: str, n: int, **kwargs: Any) -> list[Any]:
    async def one() -> Any:
        resp = await client.get(path, **kwargs)
        await resp.read()
        return resp

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_burst_of_four_times_the_limit_reaches_the_vendor_at_the_limit(
    gateway: Any, vendor: Any
) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(limited_config(server, "requests = 20, per_seconds = 1, max_wait_seconds = 6"))
    responses = await fire(client, "/v/burst", 80)
    assert [r.status for r in responses] == [200] * 80
    times = server.app[ARRIVALS].all()
    assert len(times) == 80
    rate = long_run_rate(times, skip=20)  # after the burst of 20, one every 50 ms
    print(f"burst 80 at 20/s: long-run {rate:.2f}/s, max in 1s {max_in_window(times)}")
    assert 18.0 <= rate <= 22.0
    assert max_in_window(times) <= 20 + 20  # rate + burst


async def test_sustained_overload_is_shed_and_the_vendor_sees_the_limit(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(
        limited_config(server, "requests = 20, per_seconds = 1, max_wait_seconds = 1, burst = 5")
    )
    statuses: list[int] = []
    retry_afters: list[str] = []

    async def one() -> None:
        resp = await client.get("/v/steady")
        await resp.read()
        statuses.append(resp.status)
        if resp.status == 429:
            retry_afters.append(resp.headers["Retry-After"])

    # 3x the limit, spread evenly over 3 seconds.
    tasks = []
    for _ in range(180):
        tasks.append(asyncio.ensure_future(one()))
        await asyncio.sleep(1 / 60)
    await asyncio.gather(*tasks)
    times = server.app[ARRIVALS].all()
    rate = long_run_rate(times, skip=5)
    print(
        f"3x overload at 20/s: vendor got {len(times)}, long-run {rate:.2f}/s, max in 1s {max_in_window(times)}"
    )
    assert 18.0 <= rate <= 22.0
    assert max_in_window(times) <= 20 + 5
    assert statuses.count(429) > 60  # the rest were shed, not queued forever
    assert statuses.count(200) == len(times)
    assert all(int(value) >= 1 for value in retry_afters)
    registry = client.app[SERVICES].ratelimits
    assert registry.rejected["v"] == statuses.count(429)
    assert registry.wait_seconds["v"].count == statuses.count(200)


async def test_shed_request_gets_429_problem_with_all_three_headers(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(
        limited_config(server, "requests = 2, per_seconds = 1, max_wait_seconds = 0.2, max_queue = 1")
    )
    responses = await fire(client, "/v/x", 6)
    refused = [r for r in responses if r.status == 429]
    assert len(refused) >= 3
    for resp in refused:
        assert resp.headers["Content-Type"] == "application/problem+json"
        retry = int(resp.headers["Retry-After"])
        assert retry >= 1
        assert resp.headers["RateLimit-Policy"] == '"v";q=2;w=1'
        assert resp.headers["RateLimit"] == f'"v";r=0;t={retry}'
        body = await resp.json()
        assert body["status"] == 429
        assert body["type"].endswith("/rate-limited")
        assert body["request_id"] == resp.headers["X-Request-Id"]
        assert body["policy"] == "v"
    # At most the burst (2) went at once and one more after a queued wait of <= 0.2 s.
    assert len(server.app[ARRIVALS].all()) <= 3


async def test_zero_wait_refuses_at_once(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(limited_config(server, "requests = 1, per_seconds = 10, max_wait_seconds = 0"))
    first = await client.get("/v/a")
    started = time.monotonic()
    second = await client.get("/v/a")
    assert (first.status, second.status) == (200, 429)
    assert time.monotonic() - started < 0.5
    assert second.headers["RateLimit-Policy"] == '"v";q=1;w=10'
    assert 9 <= int(second.headers["Retry-After"]) <= 10


async def test_vendor_429_with_retry_after_pauses_every_caller_and_retries_once(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/limited"] = ["1"]
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 3"))
    first = asyncio.ensure_future(client.get("/v/limited"))
    await state.throttled.wait()
    throttled = state.throttled_at[0]
    await asyncio.sleep(0.05)
    other = await client.get("/v/other")  # another caller, another path: held until the pause ends
    assert other.status == 200
    resp = await first
    assert resp.status == 200  # GET is safe to send again: the caller never saw the vendor's 429
    assert len(state.times["/limited"]) == 2
    assert state.times["/limited"][1] - throttled >= 0.95
    assert state.times["/other"][0] - throttled >= 0.95
    access = {r["path"]: r for r in logs.access()}
    assert access["/v/limited"]["attempts"] == 2
    events = [r for r in logs.records() if r["event"] == "vendor_paused"]
    assert len(events) == 1 and events[0]["vendor"] == "v" and events[0]["status"] == 429


async def test_vendor_503_with_an_http_date_pauses_too(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle_status = 503
    # HTTP-dates have whole seconds: 2 s from now is between 1 and 2 s away.
    state.throttle["/busy"] = [format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)]
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 3"))
    resp = await client.delete("/v/busy")
    assert resp.status == 200  # DELETE is idempotent: sent again after the pause
    gap = state.times["/busy"][1] - state.throttled_at[0]
    assert 0.9 <= gap <= 2.5


async def test_a_second_429_pauses_again_and_is_passed_on(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/limited"] = ["1", "1"]
    client = await gateway(
        limited_config(
            server, "requests = 100, per_seconds = 1, max_wait_seconds = 3", "retry = { attempts = 2 }"
        )
    )
    resp = await client.get("/v/limited")
    assert resp.status == 429  # sent once more, refused again: the vendor's answer, no third try
    assert len(state.times["/limited"]) == 2
    assert (await client.get("/v/next")).status == 200
    assert state.times["/next"][0] - state.throttled_at[1] >= 0.95


async def test_unsafe_post_is_not_resent_but_still_pauses(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/charge"] = ["1"]
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 3"))
    resp = await client.post("/v/charge", json={"amount": 1})
    assert resp.status == 429  # the vendor's own answer, passed through
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json()) == {"error": "slow down"}
    assert len(state.times["/charge"]) == 1
    started = time.monotonic()
    after = await client.get("/v/next")
    assert after.status == 200
    assert state.times["/next"][0] - state.throttled_at[0] >= 0.95
    assert time.monotonic() - started >= 0.8


async def test_post_with_forwarded_idempotency_key_is_resent(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/charge"] = ["1"]
    client = await gateway(
        limited_config(
            server,
            "requests = 100, per_seconds = 1, max_wait_seconds = 3",
            'idempotency = { forward_header = "Idempotency-Key" }',
        )
    )
    resp = await client.post("/v/charge", json={"amount": 1}, headers={"Idempotency-Key": "k-1"})
    assert resp.status == 200
    assert len(state.times["/charge"]) == 2


async def test_retry_after_longer_than_the_vendor_timeout_is_not_waited_out(
    gateway: Any, vendor: Any
) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/slow-down"] = ["30"]
    client = await gateway(
        limited_config(
            server,
            "requests = 100, per_seconds = 1, max_wait_seconds = 1",
            "timeout = { total_seconds = 5 }",
        )
    )
    started = time.monotonic()
    resp = await client.get("/v/slow-down")
    assert resp.status == 429 and resp.headers["Retry-After"] == "30"
    assert time.monotonic() - started < 1
    # Paused for 30 s: a new request cannot be admitted within its 1 s wait and is refused at once.
    refused = await client.get("/v/other")
    assert refused.status == 429
    assert 28 <= int(refused.headers["Retry-After"]) <= 30
    assert "/other" not in state.times


async def test_concurrency_caps_requests_in_flight(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.delay = 0.15
    client = await gateway(
        f"""
[vendors.v]
base_url = "{server.make_url("/")}"
concurrency = 3
"""
    )
    responses = await fire(client, "/v/c", 12)
    assert [r.status for r in responses] == [200] * 12
    assert state.max_in_flight == 3


async def test_concurrency_queue_timeout_names_the_concurrency_policy(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    server.app[ARRIVALS].delay = 0.8
    client = await gateway(
        f"""
[vendors.v]
base_url = "{server.make_url("/")}"
concurrency = 1
rate_limit = {{ requests = 100, max_wait_seconds = 0.3 }}
"""
    )
    slow = asyncio.ensure_future(client.get("/v/slow"))
    await asyncio.sleep(0.1)
    refused = await client.get("/v/next")
    assert refused.status == 429
    assert refused.headers["RateLimit-Policy"] == '"v";q=1;qu="concurrent-requests"'
    assert (await slow).status == 200


async def test_one_callers_flood_does_not_starve_another(gateway: Any, vendor: Any, keys: None) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    client = await gateway(
        f"""
[clients.flood]
key = "env:RL_FLOOD_KEY"
allow = ["v"]

[clients.quiet]
key = "env:RL_QUIET_KEY"
allow = ["v"]

[vendors.v]
base_url = "{server.make_url("/")}"
rate_limit = {{ requests = 10, per_seconds = 1, max_wait_seconds = 4, burst = 1 }}
"""
    )
    flood = asyncio.ensure_future(fire(client, "/v/flood", 15, headers={"X-Gateway-Key": "flood-key-123"}))
    await asyncio.sleep(0.15)
    sent = time.monotonic()
    quiet = await client.get("/v/quiet", headers={"X-Gateway-Key": "quiet-key-456"})
    assert quiet.status == 200
    # Round-robin between callers: one or two of the flood's turns, not its whole backlog (~1.5 s).
    assert state.times["/quiet"][0] - sent < 0.5
    assert [r.status for r in await flood] == [200] * 15  # queued, not refused: 15 fit in max_wait


async def test_full_queue_sheds_the_longest_callers_newest_waiter(
    gateway: Any, vendor: Any, keys: None
) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(
        f"""
[clients.flood]
key = "env:RL_FLOOD_KEY"
allow = ["v"]

[clients.quiet]
key = "env:RL_QUIET_KEY"
allow = ["v"]

[vendors.v]
base_url = "{server.make_url("/")}"
rate_limit = {{ requests = 5, per_seconds = 1, max_wait_seconds = 3, burst = 1, max_queue = 4 }}
"""
    )
    flood = asyncio.ensure_future(fire(client, "/v/flood", 6, headers={"X-Gateway-Key": "flood-key-123"}))
    await asyncio.sleep(0.1)  # 1 sent, 4 queued (full), 1 refused
    quiet = await client.get("/v/quiet", headers={"X-Gateway-Key": "quiet-key-456"})
    assert quiet.status == 200  # got a place by pushing out the flood's newest waiter
    statuses = sorted(r.status for r in await flood)
    assert statuses == [200, 200, 200, 200, 429, 429]


async def test_client_quota_limits_one_caller_only(gateway: Any, vendor: Any, keys: None) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(
        f"""
[clients.flood]
key = "env:RL_FLOOD_KEY"
allow = ["v"]
rate_limit = {{ requests = 3, per_seconds = 1, max_wait_seconds = 0 }}

[clients.quiet]
key = "env:RL_QUIET_KEY"
allow = ["v"]

[vendors.v]
base_url = "{server.make_url("/")}"
"""
    )
    flood = await fire(client, "/v/a", 6, headers={"X-Gateway-Key": "flood-key-123"})
    assert sorted(r.status for r in flood) == [200] * 3 + [429] * 3
    refused = next(r for r in flood if r.status == 429)
    assert refused.headers["RateLimit-Policy"] == '"client:flood";q=3;w=1'
    quiet = await fire(client, "/v/b", 6, headers={"X-Gateway-Key": "quiet-key-456"})
    assert [r.status for r in quiet] == [200] * 6


async def test_route_limit_applies_to_its_route_only(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(
        f"""
[vendors.v]
base_url = "{server.make_url("/")}"
""",
        routes={
            "v": """
vendor = "v"
expose = "all"

[[route]]
method = "GET"
path = "/search/**"
rate_limit = { requests = 2, per_seconds = 1, max_wait_seconds = 0 }
"""
        },
    )
    searches = await fire(client, "/v/search/x", 4)
    assert sorted(r.status for r in searches) == [200, 200, 429, 429]
    refused = next(r for r in searches if r.status == 429)
    assert refused.headers["RateLimit-Policy"] == '"v:GET /search/**";q=2;w=1'
    others = await fire(client, "/v/other", 4)
    assert [r.status for r in others] == [200] * 4


async def test_global_scope_on_memory_store_behaves_like_local(gateway: Any, vendor: Any) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(
        limited_config(
            server, 'requests = 20, per_seconds = 1, max_wait_seconds = 3, burst = 2, scope = "global"'
        )
    )
    responses = await fire(client, "/v/g", 30)
    assert [r.status for r in responses] == [200] * 30
    rate = long_run_rate(server.app[ARRIVALS].all(), skip=2)
    assert 18.0 <= rate <= 22.0


@pytest.mark.redis
async def test_global_limit_falls_back_to_local_when_redis_is_down(
    gateway: Any, vendor: Any, redis_server: Any, logs: CapturedLogs
) -> None:
    server = await vendor(rate_vendor())
    client = await gateway(
        limited_config(
            server,
            'requests = 20, per_seconds = 1, max_wait_seconds = 4, burst = 1, scope = "global"',
            head=f'[gateway]\nstore = "{redis_server.url}"',
        )
    )
    assert (await client.get("/v/warm")).status == 200
    redis_server.kill()
    responses = await fire(client, "/v/down", 20)
    assert [r.status for r in responses] == [200] * 20
    rate = long_run_rate(server.app[ARRIVALS].times["/down"], skip=1)
    assert rate <= 22.0  # still paced: this process's own limit
    events = [r for r in logs.records() if r["event"] == "ratelimit_store_unavailable"]
    assert events and events[0]["level"] == "error" and events[0]["policy"] == "v"
    assert client.app[SERVICES].ratelimits.store_fallbacks["v"] >= 1
