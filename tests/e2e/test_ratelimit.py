"""Rate limits end to end, measured where it matters: the arrival times at a real local vendor.

The limiters run on a hand-driven clock (``tests.manual_clock``) that the vendor stamps arrivals with
too: a test lets every request get as far as it can at one instant, then moves the clock to the next
deadline. Bounds are then exact statements about the schedule, whatever the load on the machine (a
loaded 2-core box once turned the burst test's 40 into 42 on the wall clock). Tests of pauses that go
through the retry stage's real sleeps keep the wall clock and assert lower bounds only, which a slow
machine cannot break.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import pytest

from tests.conftest import CapturedLogs
from tests.manual_clock import ManualClock, advance, queued, until
from tests.ratelimit_vendor import ARRIVALS, Arrivals, long_run_rate, max_in_window, rate_vendor

EPSILON = 1e-9  # float rounding on the manual clock's sums


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


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


async def fire(client: Any, path: str, n: int, statuses: list[int] | None = None, **kwargs: Any) -> list[Any]:
    """``n`` concurrent GETs; each status goes into ``statuses`` as soon as its answer is read."""

    async def one() -> Any:
        resp = await client.get(path, **kwargs)
        await resp.read()
        if statuses is not None:
            statuses.append(resp.status)
        return resp

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_burst_of_four_times_the_limit_reaches_the_vendor_at_the_limit(
    gateway: Any, vendor: Any, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    client = await gateway(limited_config(server, "requests = 20, per_seconds = 1, max_wait_seconds = 6"))
    clock.install(client.app)
    burst = asyncio.ensure_future(fire(client, "/v/burst", 80))
    await advance(clock, lambda: len(state.all()) + queued(client.app) == 80, done=burst.done)
    assert [r.status for r in burst.result()] == [200] * 80
    times = state.all()
    assert len(times) == 80
    assert times.count(times[0]) == 20  # the burst went at once
    rate = long_run_rate(times, skip=20)  # after the burst of 20, one every 50 ms
    print(f"burst 80 at 20/s: long-run {rate:.2f}/s, max in 1s {max_in_window(times)}")
    assert rate == pytest.approx(20.0, rel=1e-6)
    assert max_in_window(times) <= 20 + 20  # rate + burst


async def test_sustained_overload_is_shed_and_the_vendor_sees_the_limit(
    gateway: Any, vendor: Any, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    client = await gateway(
        limited_config(server, "requests = 20, per_seconds = 1, max_wait_seconds = 1, burst = 5")
    )
    clock.install(client.app)
    statuses: list[int] = []
    retry_afters: list[str] = []

    async def one() -> None:
        resp = await client.get("/v/steady")
        await resp.read()
        if resp.status == 429:
            retry_afters.append(resp.headers["Retry-After"])
        statuses.append(resp.status)

    tasks: list[asyncio.Future[None]] = []

    def idle() -> bool:  # every request sent so far reached the vendor, is queued, or was refused
        return len(state.all()) + queued(client.app) + statuses.count(429) == len(tasks)

    # 3x the limit, one request every 1/60 s for 3 seconds.
    start = clock.now()
    for i in range(180):
        tasks.append(asyncio.ensure_future(one()))
        await advance(clock, idle, to=start + (i + 1) / 60)
    await advance(clock, idle, done=lambda: all(t.done() for t in tasks))
    times = state.all()
    # Arriving 1/60 s apart, 7 go in the first 0.1 s while the burst allowance (5) drains; then the pace.
    rate = long_run_rate(times, skip=7)
    print(
        f"3x overload at 20/s: vendor got {len(times)}, long-run {rate:.2f}/s, max in 1s {max_in_window(times)}"
    )
    assert rate == pytest.approx(20.0, rel=1e-6)  # the queue never ran dry: the whole limit, no more
    assert max_in_window(times) <= 20 + 5
    assert statuses.count(429) > 60  # the rest were shed, not queued forever
    assert statuses.count(200) == len(times)
    assert all(int(value) >= 1 for value in retry_afters)
    registry = client.app.services.ratelimits
    assert registry.rejected["v"] == statuses.count(429)
    assert registry.wait_seconds["v"].count == statuses.count(200)


async def test_shed_request_gets_429_problem_with_all_three_headers(
    gateway: Any, vendor: Any, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    client = await gateway(
        limited_config(server, "requests = 2, per_seconds = 1, max_wait_seconds = 0.2, max_queue = 1")
    )
    clock.install(client.app)
    statuses: list[int] = []
    task = asyncio.ensure_future(fire(client, "/v/x", 6, statuses))
    await advance(
        clock, lambda: len(state.all()) + queued(client.app) + statuses.count(429) == 6, done=task.done
    )
    refused = [r for r in task.result() if r.status == 429]
    # The burst (2) went at once; one queued, and gave up after 0.2 s with the next turn 0.5 s away;
    # three found the queue full.
    assert len(refused) == 4
    assert len(state.all()) == 2
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


async def test_zero_wait_refuses_at_once(gateway: Any, vendor: Any, clock: ManualClock) -> None:
    server = await vendor(rate_vendor(clock.now))
    client = await gateway(limited_config(server, "requests = 1, per_seconds = 10, max_wait_seconds = 0"))
    clock.install(client.app)
    started = clock.now()
    first = await client.get("/v/a")
    second = await asyncio.wait_for(client.get("/v/a"), 30)  # answered with the clock standing still
    assert (first.status, second.status) == (200, 429)
    assert clock.now() == started
    assert second.headers["RateLimit-Policy"] == '"v";q=1;w=10'
    assert second.headers["Retry-After"] == "10"


async def test_vendor_429_with_retry_after_pauses_every_caller_and_retries_once(
    gateway: Any, vendor: Any, logs: CapturedLogs, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/limited"] = ["1"]
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 3"))
    clock.install(client.app)
    registry = client.app.services.ratelimits
    first = asyncio.ensure_future(client.get("/v/limited"))
    await until(lambda: registry.pauses["v"] == 1, "the vendor's 429 to pause its queue")
    throttled = state.throttled_at[0]
    other = asyncio.ensure_future(client.get("/v/other"))  # another caller, another path: held
    # The first request's retry (after the retry stage's own wait of at least Retry-After) and the other
    # caller both wait in the queue while the clock stands still.
    await until(lambda: queued(client.app) == 2, "the retry and the other caller to queue")
    assert "/other" not in state.times and len(state.times["/limited"]) == 1

    def idle() -> bool:
        return len(state.all()) + queued(client.app) == 3

    await advance(clock, idle, to=throttled + 0.999)
    assert "/other" not in state.times and len(state.times["/limited"]) == 1
    await advance(clock, idle, done=lambda: first.done() and other.done())
    assert (await other).status == 200
    resp = await first
    assert resp.status == 200  # GET is safe to send again: the caller never saw the vendor's 429
    assert len(state.times["/limited"]) == 2
    # Nothing before the pause ended; then the two at the pace (100/s), without a burst.
    resumed = sorted([state.times["/other"][0], state.times["/limited"][1]])
    assert [t - throttled for t in resumed] == pytest.approx([1.0, 1.01], abs=EPSILON)
    access = {r["path"]: r for r in logs.access()}
    assert access["/v/limited"]["attempts"] == 2
    events = [r for r in logs.records() if r["event"] == "vendor_paused"]
    assert len(events) == 1 and events[0]["vendor"] == "v" and events[0]["status"] == 429


async def test_vendor_503_with_an_http_date_pauses_too(gateway: Any, vendor: Any, logs: CapturedLogs) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle_status = 503
    dates: list[str] = []

    def two_seconds_from_now() -> str:  # made when the vendor answers; whole seconds: 1 to 2 s away
        dates.append(format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True))
        return dates[-1]

    state.throttle["/busy"] = [two_seconds_from_now]
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 3"))
    resp = await client.delete("/v/busy")
    assert resp.status == 200  # DELETE is idempotent: sent again after the pause
    asked = parsedate_to_datetime(dates[0]).timestamp() - state.throttled_wall[0]
    assert 1.0 < asked <= 2.0
    # Not sent again before the date (a slow machine only makes the gap longer) ...
    assert state.times["/busy"][1] - state.throttled_at[0] >= asked - 0.01
    # ... and the pause the gateway took is what was left of the vendor's date, no more.
    paused = [r for r in logs.records() if r["event"] == "vendor_paused"]
    assert len(paused) == 1 and 0 < paused[0]["retry_after_seconds"] <= asked + 0.001


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


async def test_unsafe_post_is_not_resent_but_still_pauses(
    gateway: Any, vendor: Any, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/charge"] = ["1"]
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 3"))
    clock.install(client.app)
    resp = await client.post("/v/charge", json={"amount": 1})
    assert resp.status == 429  # the vendor's own answer, passed through
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json()) == {"error": "slow down"}
    assert len(state.times["/charge"]) == 1
    after = asyncio.ensure_future(client.get("/v/next"))

    def idle() -> bool:
        return queued(client.app) + len(state.times.get("/next", ())) == 1

    await advance(clock, idle, to=state.throttled_at[0] + 0.999)
    assert not after.done() and "/next" not in state.times  # the caller waits out the pause
    await advance(clock, idle, done=after.done)
    assert (await after).status == 200
    assert state.times["/next"][0] - state.throttled_at[0] == pytest.approx(1.0, abs=EPSILON)


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
    gateway: Any, vendor: Any, logs: CapturedLogs, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/slow-down"] = ["30"]
    client = await gateway(
        limited_config(
            server,
            "requests = 100, per_seconds = 1, max_wait_seconds = 1",
            "timeout = { total_seconds = 5 }",
        )
    )
    clock.install(client.app)
    resp = await client.get("/v/slow-down")
    assert resp.status == 429 and resp.headers["Retry-After"] == "30"
    # The retry stage saw that waiting 30 s would pass total_seconds, and did not wait at all.
    assert client.app.services.retries.withheld[("v", "deadline")] == 1
    assert next(r for r in logs.access() if r["path"] == "/v/slow-down")["attempts"] == 1
    # Paused for 30 s: a new request cannot be admitted within its 1 s wait and is refused at once.
    refused = await asyncio.wait_for(client.get("/v/other"), 30)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "30"  # the clock has not moved
    assert "/other" not in state.times


async def test_concurrency_caps_requests_in_flight(gateway: Any, vendor: Any, clock: ManualClock) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    state.gate = asyncio.Event()  # the vendor holds every answer until the test lets it go
    client = await gateway(
        f"""
[vendors.v]
base_url = "{server.make_url("/")}"
concurrency = 3
"""
    )
    clock.install(client.app)  # queued requests never time out while the vendor is held
    burst = asyncio.ensure_future(fire(client, "/v/c", 12))
    await until(lambda: state.in_flight == 3 and queued(client.app) == 9, "3 at the vendor, 9 queued")
    state.gate.set()
    assert [r.status for r in await burst] == [200] * 12
    assert state.max_in_flight == 3


async def test_concurrency_queue_timeout_names_the_concurrency_policy(
    gateway: Any, vendor: Any, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    state.gate = asyncio.Event()
    client = await gateway(
        f"""
[vendors.v]
base_url = "{server.make_url("/")}"
concurrency = 1
rate_limit = {{ requests = 100, max_wait_seconds = 0.3 }}
"""
    )
    clock.install(client.app)
    slow = asyncio.ensure_future(client.get("/v/slow"))
    await until(lambda: state.in_flight == 1, "the first request at the vendor")
    waiting = asyncio.ensure_future(client.get("/v/next"))
    await until(lambda: queued(client.app) == 1, "the second request queued")
    await advance(clock, lambda: queued(client.app) == 1 or waiting.done(), done=waiting.done)
    refused = await waiting
    assert refused.status == 429
    assert refused.headers["RateLimit-Policy"] == '"v";q=1;qu="concurrent-requests"'
    state.gate.set()
    assert (await slow).status == 200


async def test_one_callers_flood_does_not_starve_another(
    gateway: Any, vendor: Any, keys: None, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
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
    clock.install(client.app)
    flood = asyncio.ensure_future(fire(client, "/v/flood", 15, headers={"X-Gateway-Key": "flood-key-123"}))
    await until(lambda: len(state.all()) == 1 and queued(client.app) == 14, "1 flood request sent, 14 queued")
    quiet = asyncio.ensure_future(client.get("/v/quiet", headers={"X-Gateway-Key": "quiet-key-456"}))
    await until(lambda: queued(client.app) == 15, "the quiet caller queued behind the flood")
    sent = clock.now()
    await advance(
        clock, lambda: len(state.all()) + queued(client.app) == 16, done=lambda: flood.done() and quiet.done()
    )
    assert (await quiet).status == 200
    # Round-robin between callers: the second turn (one of the flood's first), not after its backlog (1.4 s).
    assert state.times["/quiet"][0] - sent <= 0.2 + EPSILON
    assert [r.status for r in await flood] == [200] * 15  # queued, not refused: 15 fit in max_wait


async def test_full_queue_sheds_the_longest_callers_newest_waiter(
    gateway: Any, vendor: Any, keys: None, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
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
rate_limit = {{ requests = 5, per_seconds = 1, max_wait_seconds = 3, burst = 1, max_queue = 4 }}
"""
    )
    clock.install(client.app)
    statuses: list[int] = []
    flood = asyncio.ensure_future(
        fire(client, "/v/flood", 6, statuses, headers={"X-Gateway-Key": "flood-key-123"})
    )
    await until(
        lambda: len(state.all()) == 1 and queued(client.app) == 4 and statuses.count(429) == 1,
        "1 flood request sent, 4 queued (full), 1 refused",
    )
    quiet = asyncio.ensure_future(client.get("/v/quiet", headers={"X-Gateway-Key": "quiet-key-456"}))
    await advance(
        clock, lambda: len(state.all()) + queued(client.app) == 5, done=lambda: flood.done() and quiet.done()
    )
    assert (await quiet).status == 200  # got a place by pushing out the flood's newest waiter
    assert sorted(r.status for r in await flood) == [200, 200, 200, 200, 429, 429]


async def test_client_quota_limits_one_caller_only(
    gateway: Any, vendor: Any, keys: None, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
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
    clock.install(client.app)  # the clock stands still: the six requests arrive at one instant
    flood = await fire(client, "/v/a", 6, headers={"X-Gateway-Key": "flood-key-123"})
    assert sorted(r.status for r in flood) == [200] * 3 + [429] * 3
    refused = next(r for r in flood if r.status == 429)
    assert refused.headers["RateLimit-Policy"] == '"client:flood";q=3;w=1'
    quiet = await fire(client, "/v/b", 6, headers={"X-Gateway-Key": "quiet-key-456"})
    assert [r.status for r in quiet] == [200] * 6


async def test_route_limit_applies_to_its_route_only(gateway: Any, vendor: Any, clock: ManualClock) -> None:
    server = await vendor(rate_vendor(clock.now))
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
    clock.install(client.app)  # the clock stands still: the four searches arrive at one instant
    searches = await fire(client, "/v/search/x", 4)
    assert sorted(r.status for r in searches) == [200, 200, 429, 429]
    refused = next(r for r in searches if r.status == 429)
    assert refused.headers["RateLimit-Policy"] == '"v:GET /search/**";q=2;w=1'
    others = await fire(client, "/v/other", 4)
    assert [r.status for r in others] == [200] * 4


async def test_global_scope_on_memory_store_behaves_like_local(
    gateway: Any, vendor: Any, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    client = await gateway(
        limited_config(
            server, 'requests = 20, per_seconds = 1, max_wait_seconds = 3, burst = 2, scope = "global"'
        )
    )
    clock.install(client.app)  # the limiter's and the memory store's schedule
    task = asyncio.ensure_future(fire(client, "/v/g", 30))
    await advance(clock, lambda: len(state.all()) + queued(client.app) == 30, done=task.done)
    assert [r.status for r in task.result()] == [200] * 30
    times = state.all()
    assert times.count(times[0]) == 2  # the burst
    assert long_run_rate(times, skip=2) == pytest.approx(20.0, rel=1e-6)


@pytest.mark.redis
async def test_global_limit_falls_back_to_local_when_redis_is_down(
    gateway: Any, vendor: Any, redis_server: Any, logs: CapturedLogs, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    client = await gateway(
        limited_config(
            server,
            'requests = 20, per_seconds = 1, max_wait_seconds = 4, burst = 1, scope = "global"',
            head=f'[gateway]\nstore = "{redis_server.url}"',
        )
    )
    assert (await client.get("/v/warm")).status == 200  # paced in Redis, on Redis's clock
    clock.install(client.app)  # the fallback schedule's clock
    registry = client.app.services.ratelimits
    redis_server.kill()
    task = asyncio.ensure_future(fire(client, "/v/down", 20))

    def idle() -> bool:  # past the failed store call (real I/O), everything waits for the clock
        return (
            registry.store_fallbacks["v"] >= 1
            and len(state.times.get("/down", ())) + queued(client.app) == 20
        )

    await advance(clock, idle, done=task.done)
    assert [r.status for r in task.result()] == [200] * 20
    rate = long_run_rate(state.times["/down"], skip=1)
    assert rate <= 20.0 * (1 + EPSILON)  # still paced: this process's own limit
    events = [r for r in logs.records() if r["event"] == "ratelimit_store_unavailable"]
    assert events and events[0]["level"] == "error" and events[0]["policy"] == "v"
    assert client.app.services.ratelimits.store_fallbacks["v"] >= 1


# -- Retry-After a vendor gets wrong (issue 10) ----------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["\u00b2", "\u0663", "soon"])
async def test_an_unreadable_retry_after_is_ignored_and_the_vendors_429_passes_through(
    gateway: Any, vendor: Any, logs: CapturedLogs, clock: ManualClock, retry_after: str
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/limited"] = [retry_after] * 3  # every attempt of the retry stage gets one
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 3"))
    clock.install(client.app)
    resp = await asyncio.wait_for(client.get("/v/limited"), 30)  # a misread pause would hang it
    assert resp.status == 429  # the vendor's own answer after the retries, never a 500
    assert resp.headers["Content-Type"].startswith("application/json")
    assert (await resp.json()) == {"error": "slow down"}
    assert resp.headers["Retry-After"] == retry_after  # passed on as the vendor sent it
    assert len(state.times["/limited"]) == 3
    # Read as absent: no pause, so the next request goes with the clock standing still.
    assert (await asyncio.wait_for(client.get("/v/next"), 30)).status == 200
    assert client.app.services.ratelimits.pauses["v"] == 0
    assert not [r for r in logs.records() if r["event"] in ("vendor_paused", "vendor_pause_capped")]
    assert not [r for r in logs.records() if r.get("level") == "error"]


@pytest.mark.parametrize(
    ("retry_after", "asked"), [("1000000000", 1e9), ("9" * 400, 2**31)], ids=["1e9", "400-digits"]
)
async def test_a_huge_retry_after_pauses_the_vendor_for_max_pause_seconds_at_most(
    gateway: Any, vendor: Any, logs: CapturedLogs, clock: ManualClock, retry_after: str, asked: float
) -> None:
    server = await vendor(rate_vendor(clock.now))
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/limited"] = [retry_after]
    client = await gateway(
        limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 5, max_pause_seconds = 2")
    )
    clock.install(client.app)
    resp = await client.get("/v/limited")
    # Waiting that long would pass timeout.total_seconds, so the retry stage passes the 429 on at once.
    assert resp.status == 429 and resp.headers["Retry-After"] == retry_after
    assert (await resp.json()) == {"error": "slow down"}
    capped = [r for r in logs.records() if r["event"] == "vendor_pause_capped"]
    assert len(capped) == 1
    assert capped[0]["level"] == "warning" and capped[0]["vendor"] == "v" and capped[0]["status"] == 429
    assert capped[0]["asked_seconds"] == asked and capped[0]["max_pause_seconds"] == 2
    paused = [r for r in logs.records() if r["event"] == "vendor_paused"]
    assert len(paused) == 1 and paused[0]["retry_after_seconds"] == 2
    # The next caller waits out the 2 s cap, not the vendor's 31 years, and is then admitted.
    after = asyncio.ensure_future(client.get("/v/next"))

    def idle() -> bool:
        return queued(client.app) + len(state.times.get("/next", ())) == 1

    await advance(clock, idle, to=state.throttled_at[0] + 1.999)
    assert not after.done() and "/next" not in state.times
    await advance(clock, idle, done=after.done)
    assert (await after).status == 200
    assert state.times["/next"][0] - state.throttled_at[0] == pytest.approx(2.0, abs=EPSILON)


async def test_a_vendor_pause_is_capped_at_60_seconds_by_default(
    gateway: Any, vendor: Any, logs: CapturedLogs, clock: ManualClock
) -> None:
    server = await vendor(rate_vendor(clock.now))
    server.app[ARRIVALS].throttle["/charge"] = ["1000000000"]
    client = await gateway(limited_config(server, "requests = 100, per_seconds = 1, max_wait_seconds = 1"))
    clock.install(client.app)
    resp = await client.post("/v/charge", json={"amount": 1})  # not retried: the vendor's 429 as it is
    assert resp.status == 429 and resp.headers["Retry-After"] == "1000000000"
    refused = await asyncio.wait_for(client.get("/v/next"), 30)  # the pause is longer than its wait
    assert refused.status == 429 and refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["Retry-After"] == "60"  # not 600, not 1000000000
    capped = [r for r in logs.records() if r["event"] == "vendor_pause_capped"]
    assert len(capped) == 1 and capped[0]["max_pause_seconds"] == 60
