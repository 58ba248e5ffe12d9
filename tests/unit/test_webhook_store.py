"""Webhook event ids in the store, on both backends (memory and a private redis-server): claim, mark
published, release, leases; and Redis Streams as the store's bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.bus.base import Message
from gateway.store import MemoryStore, Store, StoreUnavailable, open_store
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        opened: Store = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = open_store(server.url)
    yield opened
    await opened.close()


async def test_claim_publish_and_duplicates(store: Store) -> None:
    ids = store.webhooks
    assert await ids.webhook_claim("stripe", "evt_1", owner="a", lease_seconds=10) == "claimed"
    assert await ids.webhook_claim("stripe", "evt_1", owner="a", lease_seconds=10) == "claimed"  # its own
    assert await ids.webhook_claim("stripe", "evt_1", owner="b", lease_seconds=10) == "in_flight"
    assert await ids.webhook_claim("github", "evt_1", owner="b", lease_seconds=10) == "claimed"  # per webhook
    await ids.webhook_published("stripe", "evt_1", keep_seconds=10)
    assert await ids.webhook_claim("stripe", "evt_1", owner="b", lease_seconds=10) == "published"
    assert await ids.webhook_claim("stripe", "evt_1", owner="a", lease_seconds=10) == "published"


async def test_release_frees_only_its_own_claim(store: Store) -> None:
    ids = store.webhooks
    assert await ids.webhook_claim("stripe", "evt_2", owner="a", lease_seconds=10) == "claimed"
    await ids.webhook_release("stripe", "evt_2", owner="b")
    assert await ids.webhook_claim("stripe", "evt_2", owner="b", lease_seconds=10) == "in_flight"
    await ids.webhook_release("stripe", "evt_2", owner="a")
    assert await ids.webhook_claim("stripe", "evt_2", owner="b", lease_seconds=10) == "claimed"
    await ids.webhook_published("stripe", "evt_2", keep_seconds=10)
    await ids.webhook_release("stripe", "evt_2", owner="b")  # published stays published
    assert await ids.webhook_claim("stripe", "evt_2", owner="c", lease_seconds=10) == "published"


async def test_a_dead_owners_claim_and_an_old_mark_expire(store: Store) -> None:
    ids = store.webhooks
    assert await ids.webhook_claim("stripe", "evt_3", owner="dead", lease_seconds=0.05) == "claimed"
    await ids.webhook_published("stripe", "evt_4", keep_seconds=0.05)
    await asyncio.sleep(0.2)
    assert await ids.webhook_claim("stripe", "evt_3", owner="b", lease_seconds=10) == "claimed"
    assert await ids.webhook_claim("stripe", "evt_4", owner="b", lease_seconds=10) == "claimed"


async def test_concurrent_claims_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.webhooks.webhook_claim("stripe", "evt_5", owner=f"o{i}", lease_seconds=10) for i in range(50))
    )
    assert sorted(results).count("claimed") == 1
    assert results.count("in_flight") == 49


async def test_memory_has_no_streams() -> None:
    assert MemoryStore().streams is None


async def test_redis_streams_add_each_message_with_its_headers(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    try:
        assert store.streams is not None
        message = Message(
            subject="vendors.stripe",
            body=b'{"id":"evt_1"}',
            headers={"Gateway-Event-Id": "evt_1"},
            msg_id="evt_1",
        )
        first = await store.streams.stream_add(message, max_length=None)
        raw = aioredis.Redis.from_url(redis_server.url)
        entries = await raw.xrange("vendors.stripe")
        assert entries == [(first.encode(), {b"body": b'{"id":"evt_1"}', b"Gateway-Event-Id": b"evt_1"})]
        for _ in range(300):
            await store.streams.stream_add(message, max_length=5)
        # Trimmed as MAXLEN ~ trims: whole internal nodes (100 entries each by default), cheaply.
        assert await raw.xlen("vendors.stripe") <= 200
        await raw.aclose()
        redis_server.kill()
        with pytest.raises(StoreUnavailable):
            await store.streams.stream_add(message, max_length=None)
    finally:
        await store.close()
