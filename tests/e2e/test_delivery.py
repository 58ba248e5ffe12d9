"""Async delivery and dead letters (docs/http.md, docs/operations.md), end to end with a real local vendor: 202 and a
Location, delivery with retries and the forwarded key, the record at /_gateway/deliveries/ID, dead
letters and the ``gateway dlq`` command, on the memory store and on a private redis-server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.conftest import CapturedLogs
from tests.redis_server import RedisServer
from tests.resilience_vendor import RECORDER, Recorder, resilience_vendor

SECRET = "vendor-token-7f3a9c"

ROUTES = {
    "v": """
vendor = "v"
expose = "all"

[[route]]
method = "POST"
path = "/effects"
delivery = "async"

[[route]]
method = "*"
path = "/fail/**"
delivery = "async"

[[route]]
method = "*"
path = "/status/**"
delivery = "async"

[[route]]
method = "POST"
path = "/maybe"
delivery = "prefer"
""",
    "nokey": """
vendor = "nokey"
expose = "all"

[[route]]
method = "POST"
path = "/fail/**"
delivery = "async"
""",
}


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_VENDOR_TOKEN", SECRET)


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def config(server: Any, store: str, delivery: str = "max_attempts = 3", head: str = "") -> str:
    return f"""
[gateway]
store = "{store}"
{head}

[delivery]
claim_after_seconds = 2
{delivery}

[vendors.v]
base_url = "{server.make_url("/")}"
auth = {{ type = "bearer", token = "env:DELIVERY_VENDOR_TOKEN" }}
idempotency = {{ forward_header = "Idempotency-Key" }}
retry = {{ base_delay_seconds = 0.01, max_delay_seconds = 0.05 }}

[vendors.nokey]
base_url = "{server.make_url("/")}"
retry = {{ base_delay_seconds = 0.01, max_delay_seconds = 0.05 }}
"""


async def start(gateway: Any, vendor: Any, store: str, **kwargs: Any) -> tuple[Any, Recorder]:
    server = await vendor(resilience_vendor())
    client = await gateway(config(server, store, **kwargs), routes=ROUTES)
    return client, server.app[RECORDER]


async def accept(client: Any, path: str, body: bytes = b'{"amount": 1}', **kwargs: Any) -> str:
    resp = await client.post(path, data=body, **kwargs)
    assert resp.status == 202, await resp.text()
    return str(resp.headers["Location"])


async def settled(client: Any, location: str, within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        resp = await client.get(location)
        assert resp.status == 200, await resp.text()
        record: dict[str, Any] = await resp.json()
        if record["state"] in ("delivered", "dead"):
            return record
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.02)


async def test_async_job_is_accepted_then_delivered(
    gateway: Any, vendor: Any, store_url: str, logs: CapturedLogs
) -> None:
    client, rec = await start(gateway, vendor, store_url)
    resp = await client.post("/v/effects", data=b'{"amount": 1}', headers={"X-Request-Id": "job-1"})
    assert resp.status == 202
    body = await resp.json()
    location = resp.headers["Location"]
    assert location == f"/_gateway/deliveries/{body['id']}" == body["location"]
    assert body["state"] == "queued" and resp.headers["X-Request-Id"] == "job-1"
    assert "Preference-Applied" not in resp.headers

    record = await settled(client, location)
    assert record["state"] == "delivered" and record["attempts"] == 1
    assert record["response"]["status"] == 201
    assert "set-cookie" not in {name.lower() for name in record["response"]["headers"]}
    key = f"gw-{body['id']}"  # no key from the caller: one made from the delivery id
    assert orjson.loads(record["response"]["body"]) == {"created": key, "body": {"amount": 1}}
    (call,) = rec.calls
    assert call.method == "POST" and call.body == b'{"amount": 1}'
    assert call.headers["Authorization"] == f"Bearer {SECRET}"  # injected at delivery time
    assert call.headers["Idempotency-Key"] == key
    assert call.headers["X-Request-Id"] == "job-1"
    assert rec.effects == {key: 1}
    assert record["idempotency_key"] == key and record["idempotency_forward_header"] == "Idempotency-Key"
    assert next(r for r in logs.records() if r["event"] == "delivery_delivered")["delivery_id"] == body["id"]
    assert client.app.services.deliveries.delivered["v"] == 1


async def test_the_callers_key_is_forwarded_and_a_repeat_is_not_queued_twice(
    gateway: Any, vendor: Any, store_url: str
) -> None:
    client, rec = await start(gateway, vendor, store_url)
    first = await client.post("/v/effects", data=b"{}", headers={"Idempotency-Key": "order-9"})
    again = await client.post("/v/effects", data=b"{}", headers={"Idempotency-Key": "order-9"})
    assert first.status == again.status == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    await settled(client, first.headers["Location"])
    assert [c.headers["Idempotency-Key"] for c in rec.calls] == ["order-9"]


async def test_a_flaky_vendor_is_retried_until_delivered(gateway: Any, vendor: Any, store_url: str) -> None:
    client, rec = await start(gateway, vendor, store_url)
    location = await accept(client, "/v/fail/2/job")  # 503, 503, then 200
    record = await settled(client, location)
    assert record["state"] == "delivered" and record["attempts"] == 3
    assert record["response"]["status"] == 200
    assert len({c.headers["Idempotency-Key"] for c in rec.calls}) == 1  # one key for every attempt


async def test_non_retryable_answer_goes_to_the_dead_letters_at_once(
    gateway: Any, vendor: Any, store_url: str, logs: CapturedLogs
) -> None:
    client, _rec = await start(gateway, vendor, store_url)
    location = await accept(client, "/v/status/422")
    record = await settled(client, location)
    assert record["state"] == "dead" and record["attempts"] == 1
    assert "422" in record["last_error"]
    assert record["response"]["status"] == 422  # the vendor's answer is kept with the dead letter
    dead = [r for r in logs.records() if r["event"] == "delivery_dead_lettered"]
    assert dead[0]["vendor"] == "v" and dead[0]["path"] == "/status/422"
    await client.app.services.deliveries.refresh()
    assert client.app.services.deliveries.dead == {"v": 1}


async def test_exhausted_attempts_go_to_the_dead_letters(gateway: Any, vendor: Any, store_url: str) -> None:
    client, rec = await start(gateway, vendor, store_url)
    record = await settled(client, await accept(client, "/v/status/503"))
    assert record["state"] == "dead" and record["attempts"] == 3
    assert "gave up after 3 attempts" in record["last_error"]
    assert len(rec.calls) == 3


NOKEY_NOT_RETRIED = (
    "vendor answered 503; not retried: POST is retried only when the vendor's config names "
    "idempotency.forward_header, and vendors.nokey names none"
)


async def test_post_without_a_forward_header_is_not_retried(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, "memory://")
    record = await settled(client, await accept(client, "/nokey/fail/1/x"))
    assert record["state"] == "dead" and record["last_error"] == NOKEY_NOT_RETRIED
    assert record["idempotency_key"] is None and record["idempotency_forward_header"] is None
    assert len(rec.calls) == 1


async def test_the_callers_key_without_a_forward_header_is_recorded_and_the_error_says_why(
    gateway: Any, vendor: Any, store_url: str, logs: CapturedLogs
) -> None:
    client, rec = await start(gateway, vendor, store_url)
    location = await accept(client, "/nokey/fail/1/x", headers={"Idempotency-Key": "order-7"})
    record = await settled(client, location)
    assert record["state"] == "dead" and record["attempts"] == 1
    # The caller's field reached the vendor as an ordinary header; the message says what was missing.
    (call,) = rec.calls
    assert call.headers["Idempotency-Key"] == "order-7"
    assert record["last_error"] == NOKEY_NOT_RETRIED
    assert "without an idempotency key" not in record["last_error"]
    assert record["idempotency_key"] == "order-7" and record["idempotency_forward_header"] is None
    dead = next(r for r in logs.records() if r["event"] == "delivery_dead_lettered")
    assert dead["error"] == NOKEY_NOT_RETRIED


async def test_prefer_respond_async_on_a_route_that_allows_it(gateway: Any, vendor: Any) -> None:
    client, rec = await start(gateway, vendor, "memory://")
    sync = await client.post("/v/maybe", data=b"now")
    assert sync.status == 200 and (await sync.json())["body"] == "now"
    resp = await client.post("/v/maybe", data=b"later", headers={"Prefer": "respond-async, wait=5"})
    assert resp.status == 202 and resp.headers["Preference-Applied"] == "respond-async"
    record = await settled(client, resp.headers["Location"])
    assert record["state"] == "delivered"
    assert "Prefer" not in rec.calls[-1].headers
    # Not on a sync route: Prefer is only a preference.
    other = await client.post("/v/elsewhere", data=b"x", headers={"Prefer": "respond-async"})
    assert other.status == 200


async def test_unknown_delivery_is_a_404_problem(gateway: Any, vendor: Any) -> None:
    client, _ = await start(gateway, vendor, "memory://")
    for path in ("/_gateway/deliveries/0193abcdef0123456789abcdef0", "/_gateway/deliveries/../../x"):
        resp = await client.get(path)
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/problem+json"


async def test_only_the_client_that_sent_it_may_look(
    gateway: Any, vendor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY_A", "client-a-key-1")
    monkeypatch.setenv("KEY_B", "client-b-key-2")
    server = await vendor(resilience_vendor())
    clients = """
[clients.a]
key = "env:KEY_A"
allow = ["v"]

[clients.b]
key = "env:KEY_B"
allow = ["v"]
"""
    client = await gateway(config(server, "memory://") + clients, routes=ROUTES)
    location = await accept(client, "/v/effects", headers={"X-Gateway-Key": "client-a-key-1"})
    assert (await client.get(location)).status == 401
    assert (await client.get(location, headers={"X-Gateway-Key": "client-b-key-2"})).status == 404
    own = await client.get(location, headers={"X-Gateway-Key": "client-a-key-1"})
    assert own.status == 200


async def test_credentials_are_never_stored(gateway: Any, vendor: Any, redis_server: RedisServer) -> None:
    client, rec = await start(gateway, vendor, redis_server.url, delivery="max_attempts = 1000")
    rec.down = True  # kept queued and retried: the record is in Redis while we look
    location = await accept(client, "/v/effects", headers={"Authorization": f"Bearer {SECRET}"})
    await asyncio.sleep(0.1)
    raw = redis.Redis(port=redis_server.port)
    try:
        values = b""
        for key in raw.scan_iter("gw:dq:*"):
            if raw.type(key) == b"hash":
                values += b"".join(v for kv in raw.hgetall(key).items() for v in kv)
        assert b"effects" in values and SECRET.encode() not in values
    finally:
        raw.close()
    rec.down = False
    assert (await settled(client, location))["state"] == "delivered"


async def test_a_store_that_is_down_accepts_nothing(
    gateway: Any, vendor: Any, redis_server: RedisServer
) -> None:
    client, _rec = await start(gateway, vendor, redis_server.url)
    redis_server.kill()
    resp = await client.post("/v/effects", data=b"{}")
    assert resp.status == 503 and resp.headers["Content-Type"] == "application/problem+json"
    assert "not accepted" in (await resp.json())["detail"]


def dlq(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "dlq", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "DELIVERY_VENDOR_TOKEN": SECRET},
        check=False,
    )


async def test_dlq_cli_lists_shows_replays_and_purges(
    gateway: Any, vendor: Any, write_config: Any, redis_server: RedisServer
) -> None:
    server = await vendor(resilience_vendor())
    rec: Recorder = server.app[RECORDER]
    path = write_config(config(server, redis_server.url), ROUTES)
    client = await gateway(config(server, redis_server.url), routes=ROUTES)
    # Refused once with a 400 (not retried: dead), accepted when sent again.
    replayed = await settled(client, await accept(client, "/v/fail/1/r?status=400"))
    doomed = await settled(client, await accept(client, "/v/status/409?x=1"))
    assert replayed["state"] == doomed["state"] == "dead"

    listed = await asyncio.to_thread(dlq, path, "list")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [fields[:5] for fields in lines] == [
        [replayed["id"], "v", "POST", "/fail/1/r?status=400", "1"],
        [doomed["id"], "v", "POST", "/status/409?x=1", "1"],
    ]
    assert "400" in lines[0][5] and "409" in lines[1][5]

    shown = await asyncio.to_thread(dlq, path, "show", doomed["id"])
    assert shown.returncode == 0
    detail = orjson.loads(shown.stdout)
    assert detail["state"] == "dead" and detail["response"]["status"] == 409
    assert detail["request"]["body"] == '{"amount": 1}'

    result = await asyncio.to_thread(dlq, path, "replay", replayed["id"])
    assert result.returncode == 0 and result.stdout.split() == ["replayed", replayed["id"]]
    record = await settled(client, f"/_gateway/deliveries/{replayed['id']}")
    assert record["state"] == "delivered" and record["replays"] == 1 and record["attempts"] == 1
    assert rec.count("/fail/1/r") == 2

    assert (await asyncio.to_thread(dlq, path, "replay", replayed["id"])).returncode == 1  # not dead now
    purged = await asyncio.to_thread(dlq, path, "purge", "--all")
    assert purged.returncode == 0 and purged.stdout.split() == ["purged", doomed["id"]]
    assert (await asyncio.to_thread(dlq, path, "list")).stdout == ""
    assert (await client.get(f"/_gateway/deliveries/{doomed['id']}")).status == 404


async def test_dlq_show_names_the_callers_key_and_why_it_was_not_retried(
    gateway: Any, vendor: Any, write_config: Any, redis_server: RedisServer
) -> None:
    server = await vendor(resilience_vendor())
    path = write_config(config(server, redis_server.url), ROUTES)
    client = await gateway(config(server, redis_server.url), routes=ROUTES)
    dead = await settled(
        client, await accept(client, "/nokey/fail/1/y", headers={"Idempotency-Key": "order-8"})
    )
    shown = await asyncio.to_thread(dlq, path, "show", dead["id"])
    assert shown.returncode == 0, shown.stderr
    detail = orjson.loads(shown.stdout)
    assert detail["idempotency_key"] == "order-8"
    assert detail["idempotency_forward_header"] is None
    assert ["Idempotency-Key", "order-8"] in detail["request"]["headers"]
    assert detail["last_error"] == NOKEY_NOT_RETRIED


async def test_dlq_cli_needs_a_redis_store(vendor: Any, write_config: Any) -> None:
    server = await vendor(resilience_vendor())
    path = write_config(config(server, "memory://"), ROUTES)
    result = await asyncio.to_thread(dlq, path, "list")
    assert result.returncode == 2 and "memory://" in result.stderr and "redis://" in result.stderr


@pytest.mark.slow
async def test_500_jobs_each_reach_a_vendor_failing_a_third_of_calls_exactly_once(
    gateway: Any, vendor: Any, redis_server: RedisServer
) -> None:
    server = await vendor(resilience_vendor())
    rec: Recorder = server.app[RECORDER]
    rec.fail_every = 3
    text = config(server, redis_server.url, delivery="max_attempts = 10")
    a = await gateway(text, routes=ROUTES)
    b = await gateway(text, routes=ROUTES)  # two gateways, one queue: both deliver
    started = time.monotonic()
    gate = asyncio.Semaphore(50)

    async def send(i: int) -> str:
        async with gate:
            return await accept(
                (a, b)[i % 2], "/v/effects", body=b'{"n": %d}' % i, headers={"Idempotency-Key": f"job-{i}"}
            )

    locations = await asyncio.gather(*(send(i) for i in range(500)))
    accepted = time.monotonic()
    deadline = accepted + 60
    while len(rec.effects) < 500:
        assert time.monotonic() < deadline, f"{len(rec.effects)} of 500 delivered"
        await asyncio.sleep(0.05)
    done = time.monotonic()
    records = [await settled(a, location) for location in locations[::25]]
    assert {r["state"] for r in records} == {"delivered"}
    assert set(rec.effects) == {f"job-{i}" for i in range(500)}
    assert set(rec.effects.values()) == {1}  # each job reached the vendor's effect exactly once
    failed = sum(1 for c in rec.calls if c.path == "/effects") - 500
    print(
        f"500 jobs: accepted in {accepted - started:.2f}s, delivered {done - accepted:.2f}s later; "
        f"{len(rec.calls)} vendor calls ({failed} failed and retried)"
    )
    for client in (a, b):
        await client.app.services.deliveries.refresh()
    assert a.app.services.deliveries.dead == {}


async def test_metrics_and_dashboard_show_retries_circuits_and_dead_letters(
    gateway: Any, vendor: Any
) -> None:
    client, _rec = await start(gateway, vendor, "memory://")
    assert (await settled(client, await accept(client, "/v/status/400")))["state"] == "dead"
    assert (await settled(client, await accept(client, "/v/fail/1/m")))["state"] == "delivered"
    await client.app.services.deliveries.refresh()
    text = await (await client.get("/_gateway/metrics")).text()
    assert 'gateway_dlq_depth{vendor="v"} 1.0' in text
    assert 'gateway_circuit_open{vendor="v"} 0.0' in text
    assert 'gateway_retries_total{reason="503",vendor="v"} 1.0' in text
    assert 'gateway_deliveries_total{outcome="dead_lettered",vendor="v"} 1.0' in text
    assert "gateway_delivery_queue_depth 0.0" in text
    client.app.monitor.tick()  # the dashboard draws the monitor's readings (one a second), not the store's
    status = await (await client.get("/_gateway/status")).json()  # what the dashboard draws
    (v,) = [entry for entry in status["vendors"] if entry["name"] == "v"]
    assert v["dead_letters"] == 1 and v["circuit"] == "closed"


async def test_each_delivery_attempt_gets_an_access_record_with_its_delivery_id(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    client, _ = await start(gateway, vendor, "memory://")
    location = await accept(client, "/v/fail/2/logged")  # 503, 503, then 200
    record = await settled(client, location)
    assert record["state"] == "delivered"
    deliveries = [r for r in logs.access() if r.get("delivery_id") == record["id"]]
    assert [r["status"] for r in deliveries] == [503, 503, 200]
    assert {(r["vendor"], r["method"], r["path"]) for r in deliveries} == {("v", "POST", "/v/fail/2/logged")}
    (accepted,) = [r for r in logs.access() if "delivery_id" not in r]
    assert accepted["status"] == 202
