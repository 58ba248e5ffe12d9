"""``memory://``: the store in this process's memory, for a single gateway (a sidecar).

Each feature's memory backend keeps the same semantics as its Redis backend, leases and expiry included,
so tests and a one-process deployment behave like a fleet.
"""

from __future__ import annotations

from ..features.circuit.store import MemoryCircuits
from ..features.delivery.store import MemoryDeliveries
from ..features.idempotency.store import MemoryIdempotency
from ..features.ratelimit.store import MemoryRates
from ..features.webhooks.store import MemoryWebhooks


class MemoryStore:
    """Each feature's memory backend, composed."""

    shared = False  # this process's own: nothing here is seen by another gateway process

    def __init__(self, url: str = "memory://") -> None:
        self._url = url
        self.idempotency = MemoryIdempotency()
        self.rates = MemoryRates()
        self.circuits = MemoryCircuits()
        self.deliveries = MemoryDeliveries()
        self.webhooks = MemoryWebhooks()
        self.streams = None  # nobody else could read a stream in this process's memory

    @property
    def url(self) -> str:
        return self._url

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self.idempotency.clear()
        self.webhooks.clear()
