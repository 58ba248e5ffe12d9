"""The store protocol, run against both backends: memory and a private redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.features.idempotency.redis_store import record_key
from gateway.features.idempotency.store import IdempotencyKey, StoredResponse
from gateway.store import MemoryStore, Store, StoreUnavailable, open_store, redact_url
from gateway.store.redis import RedisStore
from tests.redis_server import RedisServer

KEY = IdempotencyKey(vendor="stripe", client="billing", key="order-1")
ANSWER = StoredResponse(status=201, headers=(("Content-Type", "application/json"),), body=b'{"id":1}')


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        opened: Store = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = open_store(server.url)
    yield opened
    await opened.close()


async def test_first_claim_wins_and_the_record_says_who_holds_it(store: Store) -> None:
    assert (await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)).acquired
    second = await store.idempotency.claim(KEY, fingerprint="fp", owner="b", lease_seconds=10)
    assert not second.acquired
    assert second.existing is not None
    assert (second.existing.state, second.existing.owner, second.existing.fingerprint) == (
        "in_flight",
        "a",
        "fp",
    )
    # The owner claiming again (a retried store call) is harmless.
    assert (await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)).acquired


async def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.idempotency.claim(KEY, fingerprint="fp", owner=f"o{i}", lease_seconds=10) for i in range(50))
    )
    assert sum(r.acquired for r in results) == 1


async def test_complete_stores_the_answer_for_replay(store: Store) -> None:
    await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)
    assert await store.idempotency.complete(KEY, owner="a", response=ANSWER, ttl_seconds=60)
    record = await store.idempotency.get(KEY)
    assert record is not None and record.state == "completed" and record.response == ANSWER
    claim = await store.idempotency.claim(KEY, fingerprint="fp", owner="b", lease_seconds=10)
    assert not claim.acquired and claim.existing is not None and claim.existing.response == ANSWER
    # Completed is final: even the old owner cannot claim or release it again.
    assert not (await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)).acquired
    assert not await store.idempotency.release(KEY, owner="a")


async def test_an_answer_too_large_to_keep_keeps_the_key(store: Store) -> None:
    await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)
    big = StoredResponse(status=200, headers=(), body=None)
    assert await store.idempotency.complete(KEY, owner="a", response=big, ttl_seconds=60)
    record = await store.idempotency.get(KEY)
    assert record is not None and record.response == big


async def test_empty_and_binary_bodies_survive(store: Store) -> None:
    for i, body in enumerate((b"", bytes(range(256)) * 4)):
        key = IdempotencyKey(vendor="v", client=None, key=f"k{i}")
        await store.idempotency.claim(key, fingerprint="fp", owner="a", lease_seconds=10)
        await store.idempotency.complete(
            key, owner="a", response=StoredResponse(status=204, headers=(), body=body), ttl_seconds=60
        )
        record = await store.idempotency.get(key)
        assert record is not None and record.response is not None and record.response.body == body


async def test_only_the_owner_completes_renews_or_releases(store: Store) -> None:
    await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)
    assert not await store.idempotency.complete(KEY, owner="b", response=ANSWER, ttl_seconds=60)
    assert not await store.idempotency.extend(KEY, owner="b", lease_seconds=10)
    assert not await store.idempotency.release(KEY, owner="b")
    assert await store.idempotency.extend(KEY, owner="a", lease_seconds=10)
    assert await store.idempotency.release(KEY, owner="a")
    assert await store.idempotency.get(KEY) is None
    assert (await store.idempotency.claim(KEY, fingerprint="other", owner="b", lease_seconds=10)).acquired


async def test_an_abandoned_lease_expires_and_frees_the_key(store: Store) -> None:
    await store.idempotency.claim(KEY, fingerprint="fp", owner="crashed", lease_seconds=0.2)
    assert not (await store.idempotency.claim(KEY, fingerprint="fp", owner="b", lease_seconds=10)).acquired
    await asyncio.sleep(0.3)
    assert (await store.idempotency.claim(KEY, fingerprint="fp", owner="b", lease_seconds=10)).acquired
    # The crashed owner, were it to come back, finds its claim gone.
    assert not await store.idempotency.complete(KEY, owner="crashed", response=ANSWER, ttl_seconds=60)


async def test_renewal_keeps_a_live_lease(store: Store) -> None:
    await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await store.idempotency.extend(KEY, owner="a", lease_seconds=0.3)
    assert not (await store.idempotency.claim(KEY, fingerprint="fp", owner="b", lease_seconds=10)).acquired


async def test_completed_records_expire_after_their_ttl(store: Store) -> None:
    await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)
    await store.idempotency.complete(KEY, owner="a", response=ANSWER, ttl_seconds=0.2)
    await asyncio.sleep(0.3)
    assert await store.idempotency.get(KEY) is None


async def test_scopes_never_collide(store: Store) -> None:
    keys = [
        IdempotencyKey(vendor="stripe", client="a", key="b:c"),
        IdempotencyKey(vendor="stripe", client="a:b", key="c"),
        IdempotencyKey(vendor="stripe", client=None, key="k"),
        IdempotencyKey(vendor="stripe", client="", key="k"),
        IdempotencyKey(vendor="stripe", client="x", key="k"),
        IdempotencyKey(vendor="hubspot", client="x", key="k"),
    ]
    results = [await store.idempotency.claim(k, fingerprint="fp", owner="o", lease_seconds=10) for k in keys]
    assert all(r.acquired for r in results)
    for k in keys:
        record = await store.idempotency.get(k)
        assert record is not None and record.owner == "o"


def test_redis_keys_are_hash_tagged_by_vendor() -> None:
    assert record_key(KEY).startswith("gw:idem:{stripe}:")
    assert record_key(KEY) != record_key(IdempotencyKey(vendor="stripe", client=None, key="order-1"))


def test_store_urls() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("postgres://db")
    assert redact_url("redis://user:hunter2@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_url("redis://:hunter2@h") == "redis://***@h"
    assert redact_url("redis://h:6379") == "redis://h:6379"


async def test_a_dead_redis_is_store_unavailable_within_the_timeout(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_seconds=0.3)
    try:
        await store.ping()
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"redis at redis://127\.0\.0\.1"):
            await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        assert time.monotonic() - started < 2
        # Back up (empty, as after a restart): the store reconnects by itself.
        redis_server.start()
        await store.ping()
        assert (await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)).acquired
    finally:
        await store.close()


async def test_a_hung_redis_times_out_instead_of_hanging(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_seconds=0.3)
    try:
        await store.ping()
        redis_server.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.idempotency.claim(KEY, fingerprint="fp", owner="a", lease_seconds=10)
        assert time.monotonic() - started < 1.5
    finally:
        redis_server.resume()
        await store.close()
