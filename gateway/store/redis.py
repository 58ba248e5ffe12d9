"""``redis://`` (and ``rediss://``, ``unix://``): the store every gateway process of a fleet shares.

Invariants (each feature's ``redis_store.py`` keeps them):
- Every read-check-write is one Lua script, so it is atomic on the server.
- Keys carry the vendor as a hash tag (``gw:idem:{stripe}:...``): all of a vendor's keys live in one
  Redis Cluster slot.
- Nothing waits longer than ``timeout_seconds`` (connect, each command, and a connection from the pool),
  and every failure surfaces as ``StoreUnavailable``: a dead Redis costs a request one timeout, never a hang.
"""

from __future__ import annotations

from ..bus.redis_streams import RedisStreams
from ..features.circuit.redis_store import RedisCircuits
from ..features.delivery.redis_store import RedisDeliveries
from ..features.idempotency.redis_store import RedisIdempotency
from ..features.ratelimit.redis_store import RedisRates
from ..features.webhooks.redis_store import RedisWebhooks
from .connection import RedisConnection

DEFAULT_TIMEOUT_SECONDS = 1.0
DEFAULT_MAX_CONNECTIONS = 64


class RedisStore:
    """Each feature's Redis backend, composed over one connection."""

    shared = True  # every gateway process on this Redis sees the same state

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.connection = RedisConnection(
            url, timeout_seconds=timeout_seconds, max_connections=max_connections
        )
        self.idempotency = RedisIdempotency(self.connection)
        self.rates = RedisRates(self.connection)
        self.circuits = RedisCircuits(self.connection)
        self.deliveries = RedisDeliveries(self.connection)
        self.webhooks = RedisWebhooks(self.connection)
        self.streams: RedisStreams | None = RedisStreams(self.connection)

    @property
    def url(self) -> str:
        return self.connection.url

    async def ping(self) -> None:
        await self.connection.run("PING", self.connection.redis.ping())

    async def close(self) -> None:
        await self.connection.close()
