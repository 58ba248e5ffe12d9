"""The circuit-breaker and delivery-queue store operations, run against both backends (memory and a
private redis-server), which must agree."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis

from gateway.features.circuit.store import CircuitSettings
from gateway.features.delivery.redis_store import record_key
from gateway.features.delivery.store import DeliveryRequest, DeliveryResponse
from gateway.store import MemoryStore, Store, open_store
from tests.redis_server import RedisServer

SETTINGS = CircuitSettings(failure_ratio=0.5, min_requests=4, window_seconds=1.0, open_seconds=0.3)
REQUEST = DeliveryRequest(
    vendor="stripe",
    method="POST",
    path="/v1/charges",
    query="expand=x",
    segments=("v1", "charges"),
    headers=(("Content-Type", "application/json"), ("Idempotency-Key", "k-1")),
    body=b'{"amount": 1}\x00\xff',
    client="billing",
    request_id="req-1",
    idempotency_key="k-1",
    forward_header="Idempotency-Key",
)
ANSWER = DeliveryResponse(status=201, headers=(("Content-Type", "application/json"),), body=b'{"id": 1}')


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        opened: Store = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = open_store(server.url)
    yield opened
    await opened.close()


# -- circuit breakers ----------------------------------------------------------------------------


async def test_the_window_opens_the_breaker_at_the_ratio(store: Store) -> None:
    view = await store.circuits.circuit_report("v", SETTINGS, successes=2, failures=1)
    assert view.state == "closed" and not view.changed  # 3 calls: fewer than min_requests
    view = await store.circuits.circuit_report("v", SETTINGS, successes=0, failures=1)
    assert (view.state, view.changed, view.requests, view.failures) == ("open", True, 4, 2)
    assert view.wait_seconds == pytest.approx(0.3, abs=0.01)
    # Reports while open are dropped; reads say open with the time left.
    again = await store.circuits.circuit_report("v", SETTINGS, successes=0, failures=5)
    assert again.state == "open" and not again.changed and 0 < again.wait_seconds <= 0.3
    assert (await store.circuits.circuit_report("other", SETTINGS, successes=0, failures=0)).state == "closed"


async def test_old_calls_leave_the_window(store: Store) -> None:
    await store.circuits.circuit_report("v", SETTINGS, successes=0, failures=3)
    await asyncio.sleep(1.15)
    view = await store.circuits.circuit_report("v", SETTINGS, successes=0, failures=1)
    assert view.state == "closed"  # 1 failure in the window, not 4


async def test_one_probe_then_close_or_open_again(store: Store) -> None:
    await store.circuits.circuit_report("v", SETTINGS, successes=0, failures=4)
    early = await store.circuits.circuit_probe("v", SETTINGS, token="a", lease_seconds=5)
    assert early.state == "open" and not early.probe
    await asyncio.sleep(0.35)
    first = await store.circuits.circuit_probe("v", SETTINGS, token="a", lease_seconds=5)
    second = await store.circuits.circuit_probe("v", SETTINGS, token="b", lease_seconds=5)
    assert first.probe and first.state == "half_open"
    assert not second.probe and second.state == "half_open" and second.wait_seconds > 4
    # Only the lease holder's word counts.
    assert not (await store.circuits.circuit_settle("v", SETTINGS, token="b", outcome="success")).changed
    failed = await store.circuits.circuit_settle("v", SETTINGS, token="a", outcome="failure")
    assert (failed.state, failed.changed) == ("open", True)
    await asyncio.sleep(0.35)
    assert (await store.circuits.circuit_probe("v", SETTINGS, token="c", lease_seconds=5)).probe
    closed = await store.circuits.circuit_settle("v", SETTINGS, token="c", outcome="success")
    assert (closed.state, closed.changed) == ("closed", True)
    # Closed again with an empty window.
    assert (await store.circuits.circuit_report("v", SETTINGS, successes=0, failures=3)).state == "closed"


async def test_a_probe_that_never_reports_loses_its_lease(store: Store) -> None:
    await store.circuits.circuit_report("v", SETTINGS, successes=0, failures=4)
    await asyncio.sleep(0.35)
    assert (await store.circuits.circuit_probe("v", SETTINGS, token="dead", lease_seconds=0.2)).probe
    assert not (await store.circuits.circuit_probe("v", SETTINGS, token="b", lease_seconds=5)).probe
    await asyncio.sleep(0.25)
    assert (await store.circuits.circuit_probe("v", SETTINGS, token="b", lease_seconds=5)).probe
    # A probe that never reached the vendor hands the lease back at once.
    released = await store.circuits.circuit_settle("v", SETTINGS, token="b", outcome="none")
    assert released.state == "half_open" and not released.changed
    assert (await store.circuits.circuit_probe("v", SETTINGS, token="c", lease_seconds=5)).probe


# -- the delivery queue --------------------------------------------------------------------------


async def test_enqueue_take_start_done(store: Store) -> None:
    await store.deliveries.delivery_enqueue("d1", REQUEST)
    record = await store.deliveries.delivery_get("d1")
    assert record is not None and record.state == "queued" and record.request == REQUEST
    assert await store.deliveries.delivery_depth() == (1, {})
    (lease,) = await store.deliveries.delivery_take("w1", 10, claim_after_seconds=30, reclaim=True)
    assert lease.id == "d1"
    assert await store.deliveries.delivery_take("w2", 10, claim_after_seconds=30, reclaim=True) == []
    started = await store.deliveries.delivery_start(lease)
    assert started is not None and started.state == "delivering"
    await store.deliveries.delivery_done(lease, attempts=2, response=ANSWER, keep_seconds=60)
    done = await store.deliveries.delivery_get("d1")
    assert done is not None
    assert (done.state, done.attempts, done.response) == ("delivered", 2, ANSWER)
    assert await store.deliveries.delivery_depth() == (0, {})


async def test_a_callers_key_not_forwarded_under_a_forward_header_is_kept_as_such(store: Store) -> None:
    unforwarded = replace(REQUEST, forward_header=None)  # the vendor's config named no forward_header
    await store.deliveries.delivery_enqueue("d1", unforwarded)
    record = await store.deliveries.delivery_get("d1")
    assert record is not None and record.request == unforwarded
    assert record.request.idempotency_key == "k-1" and record.request.forward_header is None


async def test_a_redis_record_from_before_forward_header_was_kept_still_counts_as_forwarded(
    redis_server: RedisServer,
) -> None:
    # Such records held "key" only when the key was forwarded, under the vendor's forward_header.
    store = open_store(redis_server.url)
    raw = redis.Redis(port=redis_server.port)
    try:
        await store.deliveries.delivery_enqueue(
            "d1", replace(REQUEST, headers=(("X-Key", "k-1"),), forward_header="X-Key")
        )
        await store.deliveries.delivery_enqueue(
            "d2", replace(REQUEST, idempotency_key=None, forward_header=None)
        )
        assert raw.hdel(record_key("d1"), "fwd") == 1 and raw.hdel(record_key("d2"), "fwd") == 1
        old = await store.deliveries.delivery_get("d1")
        assert old is not None and old.request.idempotency_key == "k-1"
        assert old.request.forward_header == "X-Key"
        keyless = await store.deliveries.delivery_get("d2")
        assert keyless is not None and keyless.request.forward_header is None
    finally:
        raw.close()
        await store.close()


async def test_retry_waits_its_delay(store: Store) -> None:
    await store.deliveries.delivery_enqueue("d1", REQUEST)
    (lease,) = await store.deliveries.delivery_take("w", 1, claim_after_seconds=30, reclaim=False)
    await store.deliveries.delivery_start(lease)
    await store.deliveries.delivery_retry(lease, attempts=1, error="vendor answered 503", delay_seconds=0.3)
    record = await store.deliveries.delivery_get("d1")
    assert record is not None and record.state == "queued" and record.last_error == "vendor answered 503"
    assert record.next_attempt is not None
    assert await store.deliveries.delivery_take("w", 1, claim_after_seconds=30, reclaim=False) == []
    await asyncio.sleep(0.35)
    (again,) = await store.deliveries.delivery_take("w", 1, claim_after_seconds=30, reclaim=False)
    assert again.id == "d1"


async def test_a_dead_workers_delivery_is_reclaimed_and_a_live_ones_is_not(store: Store) -> None:
    await store.deliveries.delivery_enqueue("d1", REQUEST)
    await store.deliveries.delivery_enqueue("d2", REQUEST)
    leases = await store.deliveries.delivery_take("alive", 1, claim_after_seconds=0.6, reclaim=True)
    dead = await store.deliveries.delivery_take("dead", 1, claim_after_seconds=0.6, reclaim=True)
    for lease in (*leases, *dead):
        await store.deliveries.delivery_start(lease)
    await asyncio.sleep(0.4)
    await store.deliveries.delivery_touch("alive", leases)
    await asyncio.sleep(0.4)
    taken = await store.deliveries.delivery_take("other", 5, claim_after_seconds=0.6, reclaim=True)
    assert [lease.id for lease in taken] == [dead[0].id]


async def test_release_gives_a_delivery_back_at_once(store: Store) -> None:
    await store.deliveries.delivery_enqueue("d1", REQUEST)
    (lease,) = await store.deliveries.delivery_take("w", 1, claim_after_seconds=30, reclaim=False)
    await store.deliveries.delivery_start(lease)
    await store.deliveries.delivery_release(lease)
    (again,) = await store.deliveries.delivery_take("w2", 1, claim_after_seconds=30, reclaim=False)
    assert again.id == "d1"


async def test_dead_letters_replay_and_purge(store: Store) -> None:
    for delivery_id in ("d1", "d2"):
        await store.deliveries.delivery_enqueue(delivery_id, REQUEST)
    for lease in await store.deliveries.delivery_take("w", 2, claim_after_seconds=30, reclaim=False):
        await store.deliveries.delivery_start(lease)
        await store.deliveries.delivery_dead(lease, attempts=3, error="vendor answered 400", response=ANSWER)
    assert await store.deliveries.delivery_depth() == (0, {"stripe": 2})
    letters = await store.deliveries.dead_letters(10)
    assert [(r.id, r.state, r.attempts, r.last_error) for r in letters] == [
        ("d1", "dead", 3, "vendor answered 400"),
        ("d2", "dead", 3, "vendor answered 400"),
    ]
    assert await store.deliveries.dead_replay("d1")
    assert not await store.deliveries.dead_replay("d1")  # queued now, not dead
    replayed = await store.deliveries.delivery_get("d1")
    assert replayed is not None and (replayed.state, replayed.attempts, replayed.replays) == ("queued", 0, 1)
    (lease,) = await store.deliveries.delivery_take("w", 5, claim_after_seconds=30, reclaim=False)
    assert lease.id == "d1"
    assert await store.deliveries.dead_purge("d2") and not await store.deliveries.dead_purge("d2")
    assert await store.deliveries.delivery_get("d2") is None
    assert not await store.deliveries.dead_purge("d1")  # only dead letters can be purged
    assert await store.deliveries.delivery_depth() == (1, {})


async def test_a_final_delivery_is_never_queued_again(store: Store) -> None:
    await store.deliveries.delivery_enqueue("d1", REQUEST)
    (lease,) = await store.deliveries.delivery_take("w", 1, claim_after_seconds=0.1, reclaim=False)
    await store.deliveries.delivery_start(lease)
    await asyncio.sleep(0.15)
    (stolen,) = await store.deliveries.delivery_take("w2", 1, claim_after_seconds=0.1, reclaim=True)
    await store.deliveries.delivery_done(stolen, attempts=1, response=ANSWER, keep_seconds=60)
    # The slow first worker finishes afterwards: its retry must not undo the delivery.
    await store.deliveries.delivery_retry(lease, attempts=1, error="late", delay_seconds=0)
    await store.deliveries.delivery_dead(lease, attempts=1, error="late", response=None)
    record = await store.deliveries.delivery_get("d1")
    assert record is not None and record.state == "delivered"
    assert await store.deliveries.delivery_take("w3", 5, claim_after_seconds=0.1, reclaim=True) == []
    assert await store.deliveries.delivery_start(lease) is None
    assert await store.deliveries.delivery_depth() == (0, {})


async def test_delivered_records_expire(store: Store) -> None:
    await store.deliveries.delivery_enqueue("d1", REQUEST)
    (lease,) = await store.deliveries.delivery_take("w", 1, claim_after_seconds=30, reclaim=False)
    await store.deliveries.delivery_start(lease)
    await store.deliveries.delivery_done(lease, attempts=1, response=ANSWER, keep_seconds=0.2)
    assert await store.deliveries.delivery_get("d1") is not None
    await asyncio.sleep(0.3)
    assert await store.deliveries.delivery_get("d1") is None
