"""Retries end to end (docs/configuration.md), measured at a real local vendor: what is retried, how often,
how long the waits are, and what the caller gets when the gateway stops trying.

Backoffs are small (tens of milliseconds) and timing bounds are loose enough for a loaded 2-core box.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from tests.conftest import CapturedLogs
from tests.gateway_proc import free_port
from tests.resilience_vendor import RECORDER, Recorder, resilience_vendor

FAST = "base_delay_seconds = 0.01, max_delay_seconds = 0.05"


def config(server: Any, retry: str = FAST, extra: str = "") -> str:
    return f"""
[vendors.v]
base_url = "{server.make_url("/")}"
retry = {{ {retry} }}
circuit = {{ enabled = false }}
{extra}
"""


async def start(gateway: Any, vendor: Any, retry: str = FAST, extra: str = "") -> tuple[Any, Recorder]:
    server = await vendor(resilience_vendor())
    client = await gateway(config(server, retry, extra))
    return client, server.app[RECORDER]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "calls"),
    [
        # 503 twice, then 200: safe methods are retried until it works.
        ("GET", "/fail/2/a", {}, 200, 3),
        ("HEAD", "/fail/2/a", {}, 200, 3),
        ("PUT", "/fail/2/a", {}, 200, 3),
        ("DELETE", "/fail/2/a", {}, 200, 3),
        ("OPTIONS", "/fail/2/a", {}, 200, 3),
        # Three failures and three attempts: the vendor's last answer goes to the caller.
        ("GET", "/fail/3/a", {}, 503, 3),
        # Every retry_on status; a 500 is not in the default list.
        ("GET", "/fail/1/a?status=429", {}, 200, 2),
        ("GET", "/fail/1/a?status=502", {}, 200, 2),
        ("GET", "/fail/1/a?status=504", {}, 200, 2),
        ("GET", "/fail/1/a?status=500", {}, 500, 1),
        # A 4xx is never retried.
        ("GET", "/status/400", {}, 400, 1),
        ("GET", "/status/404", {}, 404, 1),
        ("PUT", "/status/409", {}, 409, 1),
        # POST and PATCH without an idempotency key forwarded to the vendor: never retried.
        ("POST", "/fail/2/a", {}, 503, 1),
        ("PATCH", "/fail/2/a", {}, 503, 1),
        ("POST", "/fail/2/a", {"Idempotency-Key": "k1"}, 503, 1),  # the vendor has no forward_header
    ],
)
async def test_flaky_vendor_table(
    gateway: Any, vendor: Any, method: str, path: str, headers: dict[str, str], status: int, calls: int
) -> None:
    client, rec = await start(gateway, vendor)
    resp = await client.request(method, "/v" + path, headers=headers, data=b"payload")
    await resp.read()
    assert (resp.status, len(rec.calls)) == (status, calls)


async def test_post_with_forwarded_key_is_retried_with_the_same_key_and_body(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    client, rec = await start(gateway, vendor, extra='idempotency = { forward_header = "Idempotency-Key" }')
    resp = await client.post("/v/fail/2/pay", data=b'{"amount": 5}', headers={"Idempotency-Key": "pay-1"})
    assert resp.status == 200
    assert (await resp.json())["body"] == '{"amount": 5}'
    assert [c.headers["Idempotency-Key"] for c in rec.calls] == ["pay-1"] * 3
    assert [c.body for c in rec.calls] == [b'{"amount": 5}'] * 3
    access = logs.access()[-1]
    assert access["attempts"] == 3 and access["status"] == 200
    sent = client.app.services.retries.sent
    assert sent[("v", "503")] == 2


async def test_put_body_larger_than_a_socket_read_is_replayed_whole(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor)
    body = bytes(range(256)) * 1024  # 256 KiB: read and kept, sent three times
    resp = await client.put("/v/fail/2/big", data=body)
    assert resp.status == 200
    assert [c.body == body for c in rec.calls] == [True, True, True]


async def test_connection_errors_are_retried_then_502(gateway: Any, logs: CapturedLogs) -> None:
    client = await gateway(
        f"""
[vendors.dead]
base_url = "http://127.0.0.1:{free_port()}"
retry = {{ base_delay_seconds = 0.01, max_delay_seconds = 0.02 }}
"""
    )
    resp = await client.get("/dead/x")
    assert resp.status == 502
    assert "unreachable" in (await resp.json())["detail"]
    assert logs.access()[-1]["attempts"] == 3
    assert client.app.services.retries.sent[("dead", "connection")] == 2


async def test_retry_on_and_attempts_are_configurable(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, retry=FAST + ", attempts = 5, retry_on = [500]")
    assert (await client.get("/v/fail/4/a?status=500")).status == 200
    assert len(rec.calls) == 5
    assert (await client.get("/v/fail/1/b?status=503")).status == 503  # no longer in retry_on


async def test_attempts_one_turns_retries_off(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, retry="attempts = 1")
    assert (await client.get("/v/fail/1/a")).status == 503
    assert len(rec.calls) == 1


async def test_backoff_waits_stay_within_full_jitter_bounds(gateway: Any, vendor: Any) -> None:
    # Caps: 0.04, 0.08, 0.16, then max_delay 0.2: each gap is somewhere in [0, cap] plus a round trip.
    client, rec = await start(
        gateway,
        vendor,
        "attempts = 6, base_delay_seconds = 0.04, max_delay_seconds = 0.2, budget_min_per_second = 100",
    )
    caps = [0.04, 0.08, 0.16, 0.2, 0.2]
    gaps: list[float] = []
    capped: list[float] = []  # the waits capped by max_delay_seconds
    for i in range(6):
        rec.calls.clear()
        assert (await client.get(f"/v/fail/5/run{i}")).status == 200
        run = [b - a for a, b in itertools.pairwise(rec.times("/fail"))]
        for gap, cap in zip(run, caps, strict=True):
            assert gap <= cap + 0.25, (gap, cap)  # a wait of at most the cap, plus a round trip
        gaps += run
        capped += run[3:]
    # Full jitter, not a fixed delay: waits with one cap spread over its range.
    assert max(capped) - min(capped) > 0.05
    print(f"backoff gaps (s): min {min(gaps):.3f} mean {sum(gaps) / len(gaps):.3f} max {max(gaps):.3f}")


async def test_retry_after_is_honoured(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor)
    started = time.monotonic()
    resp = await client.get("/v/fail/1/a?retry_after=1")
    assert resp.status == 200
    first, second = rec.times("/fail")
    assert second - first >= 0.95
    assert time.monotonic() - started < 3


async def test_retry_after_beyond_the_deadline_passes_the_answer_on_at_once(
    gateway: Any, vendor: Any
) -> None:
    client, rec = await start(gateway, vendor, extra="timeout = { total_seconds = 2 }")
    started = time.monotonic()
    resp = await client.get("/v/fail/1/a?retry_after=30")
    assert resp.status == 503 and resp.headers["Retry-After"] == "30"
    assert (await resp.json())["error"] == "flaky"  # the vendor's own answer, unchanged
    assert len(rec.calls) == 1
    assert time.monotonic() - started < 1


async def test_total_timeout_bounds_every_attempt_together(gateway: Any, vendor: Any) -> None:
    # Each attempt takes 0.4 s and fails; with a 1 s deadline there is room for three at most, the
    # last one cut short.
    client, rec = await start(
        gateway,
        vendor,
        retry=FAST + ", attempts = 10",
        extra="timeout = { connect_seconds = 1, total_seconds = 1 }",
    )
    started = time.monotonic()
    resp = await client.get("/v/slow/0.4?status=503")
    elapsed = time.monotonic() - started
    assert resp.status in (503, 504)
    assert 2 <= len(rec.calls) <= 3
    assert elapsed < 1.4, elapsed


async def test_budget_limits_retries_under_a_vendor_that_always_fails(gateway: Any, vendor: Any) -> None:
    client, rec = await start(
        gateway, vendor, retry=FAST + ", attempts = 3, budget_ratio = 0.2, budget_min_per_second = 0"
    )
    requests = 100
    for i in range(requests):
        assert (await client.get(f"/v/status/503?i={i}")).status == 503
    calls = len(rec.calls)
    print(f"100 requests to a vendor failing every call: {calls} calls ({calls / requests - 1:.0%} extra)")
    # Without a budget: 300 calls. With it: at most 20% more than the requests, and retries did happen.
    assert requests + 10 <= calls <= requests * 1.2 + 1
    retries = client.app.services.retries
    assert retries.withheld[("v", "budget")] > 0
    assert sum(n for (v, _), n in retries.sent.items() if v == "v") == calls - requests


async def test_a_quiet_vendor_keeps_its_retries_thanks_to_the_floor(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor)  # default floor: 1 retry per second of the window
    assert (await client.get("/v/fail/2/a")).status == 200
    assert len(rec.calls) == 3


async def test_upstream_time_in_the_access_log_adds_up_every_attempt(
    gateway: Any, vendor: Any, logs: Any
) -> None:
    import asyncio

    from aiohttp import web

    calls = 0

    async def slow_then_ok(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.15)
        return web.Response(status=503 if calls == 1 else 200, text="x", headers={"Retry-After": "0"})

    app = web.Application()
    app.router.add_get("/x", slow_then_ok)
    server = await vendor(app)
    client = await gateway(
        f'[vendors.v]\nbase_url = "{server.make_url("/")}"\nretry = {{ attempts = 2, base_delay_seconds = 0.01, max_delay_seconds = 0.01 }}\n'
    )
    assert (await client.get("/v/x")).status == 200
    (record,) = logs.access()
    assert record["attempts"] == 2
    assert record["upstream_ms"] >= 290  # both 150 ms vendor answers, not just the last
