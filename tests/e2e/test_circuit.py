"""Circuit breakers end to end: a failing vendor trips the breaker, which then answers 503 without
calling it, lets one probe through after ``open_seconds``, and closes when the probe succeeds. With
the Redis store two gateways share one breaker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import CapturedLogs
from tests.redis_server import RedisServer
from tests.resilience_vendor import RECORDER, Recorder, resilience_vendor

CIRCUIT = "circuit = { min_requests = 4, failure_ratio = 0.5, window_seconds = 5, open_seconds = 0.5 }"


def config(server: Any, circuit: str = CIRCUIT, retry: str = "attempts = 1", head: str = "") -> str:
    return f"""
{head}
[vendors.v]
base_url = "{server.make_url("/")}"
retry = {{ {retry} }}
{circuit}
"""


async def start(gateway: Any, vendor: Any, **kwargs: Any) -> tuple[Any, Recorder]:
    server = await vendor(resilience_vendor())
    client = await gateway(config(server, **kwargs))
    return client, server.app[RECORDER]


async def statuses(client: Any, path: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        resp = await client.get(path)
        await resp.read()
        out.append(resp.status)
    return out


async def test_breaker_opens_rejects_fast_probes_and_closes(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    client, rec = await start(gateway, vendor)
    rec.down = True
    assert await statuses(client, "/v/x", 4) == [503] * 4  # the vendor's own 503s
    assert len(rec.calls) == 4
    breakers = client.app.services.circuits
    assert breakers.open_state() == {"v": 1}

    started = time.monotonic()
    resp = await client.get("/v/x")
    assert time.monotonic() - started < 0.5
    assert resp.status == 503 and resp.headers["Content-Type"] == "application/problem+json"
    assert resp.headers["Retry-After"] == "1"
    problem = await resp.json()
    assert problem["type"].endswith("/circuit-open") and problem["request_id"] == resp.headers["X-Request-Id"]
    assert len(rec.calls) == 4  # not called while open
    opened = [r for r in logs.records() if r["event"] == "circuit_opened"]
    assert len(opened) == 1 and opened[0]["vendor"] == "v" and opened[0]["failures"] == 4

    rec.down = False
    await asyncio.sleep(0.6)
    assert (await client.get("/v/probe")).status == 200  # the half-open probe
    assert [c.path for c in rec.calls[4:]] == ["/probe"]
    assert breakers.open_state() == {"v": 0}
    assert [r["event"] for r in logs.records() if r["event"].startswith("circuit_")] == [
        "circuit_opened",
        "circuit_closed",
    ]
    assert await statuses(client, "/v/after", 5) == [200] * 5
    assert breakers.rejected["v"] == 1


async def test_a_failed_probe_opens_it_again(gateway: Any, vendor: Any, logs: CapturedLogs) -> None:
    client, rec = await start(gateway, vendor)
    rec.down = True
    await statuses(client, "/v/x", 4)
    await asyncio.sleep(0.6)
    assert (await client.get("/v/probe")).status == 503  # the vendor's answer to the probe
    refused = await client.get("/v/x")
    assert refused.status == 503 and (await refused.json())["type"].endswith("/circuit-open")
    assert len(rec.calls) == 5
    reopened = [r for r in logs.records() if r["event"] == "circuit_opened"]
    assert len(reopened) == 2 and "probe" in reopened[1]["reason"]


async def test_half_open_lets_exactly_one_probe_through(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor)
    rec.down = True
    await statuses(client, "/v/x", 4)
    rec.down = False
    await asyncio.sleep(0.6)

    async def one() -> int:
        resp = await client.get("/v/slow/0.3")
        await resp.read()
        return resp.status

    results = await asyncio.gather(*(one() for _ in range(8)))
    assert sorted(results) == [200] + [503] * 7
    assert rec.count("/slow") == 1


async def test_successes_keep_it_closed_below_the_ratio(gateway: Any, vendor: Any) -> None:
    client, _rec = await start(gateway, vendor)
    assert await statuses(client, "/v/ok", 6) == [200] * 6
    # 5 failures in 11 calls are below the ratio (0.5); the sixth makes 6 in 12, which opens it.
    assert await statuses(client, "/v/status/500", 5) == [500] * 5
    assert client.app.services.circuits.open_state() == {"v": 0}
    assert await statuses(client, "/v/status/502", 1) == [502]
    assert client.app.services.circuits.open_state() == {"v": 1}


async def test_client_errors_do_not_count_as_failures(gateway: Any, vendor: Any) -> None:
    client, _rec = await start(gateway, vendor)
    assert await statuses(client, "/v/status/404", 10) == [404] * 10
    assert client.app.services.circuits.open_state() == {"v": 0}


async def test_an_open_circuit_stops_a_retry_loop(gateway: Any, vendor: Any) -> None:
    client, rec = await start(
        gateway,
        vendor,
        circuit="circuit = { min_requests = 2, failure_ratio = 0.5, open_seconds = 30 }",
        retry="attempts = 5, base_delay_seconds = 0.01, max_delay_seconds = 0.01",
    )
    rec.down = True
    resp = await client.get("/v/x")
    assert resp.status == 503
    assert (await resp.json()) == {"error": "down"}  # the vendor's last answer, not the breaker's
    assert len(rec.calls) == 2


async def test_disabled_breaker_never_opens(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, circuit="circuit = { enabled = false }")
    rec.down = True
    assert await statuses(client, "/v/x", 30) == [503] * 30
    assert len(rec.calls) == 30
    assert client.app.services.circuits.open_state() == {}


async def test_default_breaker_opens_after_twenty_failures(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, circuit="")
    rec.down = True
    results = await statuses(client, "/v/x", 22)
    assert results == [503] * 22
    assert len(rec.calls) == 20


async def test_two_gateways_on_redis_share_one_breaker(
    gateway: Any, vendor: Any, redis_server: RedisServer, logs: CapturedLogs
) -> None:
    server = await vendor(resilience_vendor())
    rec = server.app[RECORDER]
    # open_seconds leaves b's refusal (1.4 s after the breaker opened) 3.6 s of room on a loaded machine.
    circuit = "circuit = { min_requests = 4, failure_ratio = 0.5, window_seconds = 8, open_seconds = 5 }"
    text = config(server, circuit=circuit, head=f'[gateway]\nstore = "{redis_server.url}"')
    a = await gateway(text)
    b = await gateway(text)
    assert (await b.get("/v/ok")).status == 200  # b has seen the breaker closed
    rec.down = True
    opened = time.monotonic()
    assert await statuses(a, "/v/x", 4) == [503] * 4
    await asyncio.sleep(1.4)  # b's view is old now (a report interval + 1 s): it asks the store first
    refused = await b.get("/v/x")
    assert refused.status == 503 and (await refused.json())["type"].endswith("/circuit-open")
    assert len(rec.calls) == 5  # 1 + 4: b did not call the vendor

    rec.down = False
    await asyncio.sleep(max(0.0, opened + 5.2 - time.monotonic()))
    assert (await b.get("/v/probe")).status == 200  # b probes; the breaker closes for both
    await asyncio.sleep(1.4)
    assert (await a.get("/v/again")).status == 200
    assert a.app.services.circuits.open_state() == {"v": 0}
    events = [r["event"] for r in logs.records() if r["event"].startswith("circuit_")]
    assert events == ["circuit_opened", "circuit_closed"]  # once each, by the process that did it


async def test_outcomes_on_redis_are_reported_in_batches(
    gateway: Any, vendor: Any, redis_server: RedisServer
) -> None:
    server = await vendor(resilience_vendor())
    rec = server.app[RECORDER]
    client = await gateway(config(server, head=f'[gateway]\nstore = "{redis_server.url}"'))
    rec.down = True
    assert await statuses(client, "/v/x", 4) == [503] * 4
    # Within one report interval the breaker is open for this process too.
    deadline = time.monotonic() + 2
    while client.app.services.circuits.open_state() != {"v": 1}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    resp = await client.get("/v/x")
    assert resp.status == 503 and "Retry-After" in resp.headers
    assert len(rec.calls) == 4
