"""``memory://``: the store in this process's memory, for a single gateway (a sidecar).

Same semantics as the Redis backend, leases and expiry included, so tests and a one-process deployment
behave like a fleet. Operations never wait, so there is nothing to time out: each one runs between two
awaits and is therefore atomic with respect to the other requests on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from ..features.circuit.store import MemoryCircuits
from ..features.delivery.store import MemoryDeliveries
from .base import Claim, IdempotencyKey, IdempotencyRecord, RateBucket, StoredResponse, gcra, gcra_pause

# Expired records are dropped when touched, and all of them at most this often, so memory stays
# bounded by what is live rather than by everything ever stored.
SWEEP_INTERVAL_SECONDS = 30.0


class MemoryStore:
    """The memory backend: idempotency records and rate schedules here, and each feature's own memory
    backend composed in (``circuits``, ``deliveries``)."""

    shared = False  # this process's own: nothing here is seen by another gateway process

    def __init__(self, url: str = "memory://") -> None:
        self._url = url
        self.circuits = MemoryCircuits()
        self.deliveries = MemoryDeliveries()
        self._idem: dict[IdempotencyKey, tuple[IdempotencyRecord, float]] = {}  # record, expires (monotonic)
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS
        # (tag, name) -> theoretical arrival time (monotonic); one entry per configured limit.
        self._rates: dict[tuple[str, str], float] = {}
        # The rate schedules' clock (monotonic seconds); tests give it the limiters' hand-driven clock.
        self.rate_clock: Callable[[], float] = time.monotonic

    @property
    def url(self) -> str:
        return self._url

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._idem.clear()

    def _live(self, key: IdempotencyKey, now: float) -> IdempotencyRecord | None:
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_SECONDS
            for stale in [k for k, (_, expires) in self._idem.items() if expires <= now]:
                del self._idem[stale]
        entry = self._idem.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._idem[key]
            return None
        return entry[0]

    async def claim(
        self, key: IdempotencyKey, *, fingerprint: str, owner: str, lease_seconds: float
    ) -> Claim:
        now = time.monotonic()
        record = self._live(key, now)
        if record is None or (record.state == "in_flight" and record.owner == owner):
            fresh = IdempotencyRecord(state="in_flight", fingerprint=fingerprint, owner=owner)
            self._idem[key] = (fresh, now + lease_seconds)
            return Claim(True)
        return Claim(False, record)

    def _held(self, key: IdempotencyKey, owner: str, now: float) -> IdempotencyRecord | None:
        record = self._live(key, now)
        if record is None or record.state != "in_flight" or record.owner != owner:
            return None
        return record

    async def extend(self, key: IdempotencyKey, *, owner: str, lease_seconds: float) -> bool:
        now = time.monotonic()
        record = self._held(key, owner, now)
        if record is None:
            return False
        self._idem[key] = (record, now + lease_seconds)
        return True

    async def complete(
        self, key: IdempotencyKey, *, owner: str, response: StoredResponse, ttl_seconds: float
    ) -> bool:
        now = time.monotonic()
        record = self._held(key, owner, now)
        if record is None:
            return False
        self._idem[key] = (replace(record, state="completed", response=response), now + ttl_seconds)
        return True

    async def release(self, key: IdempotencyKey, *, owner: str) -> bool:
        if self._held(key, owner, time.monotonic()) is None:
            return False
        del self._idem[key]
        return True

    async def get(self, key: IdempotencyKey) -> IdempotencyRecord | None:
        return self._live(key, time.monotonic())

    async def rate_take(self, bucket: RateBucket) -> float:
        now = self.rate_clock()
        key = (bucket.tag, bucket.name)
        wait, tat = gcra(self._rates.get(key, now), now, bucket.interval_seconds, bucket.tolerance_seconds)
        self._rates[key] = tat
        return wait

    async def rate_pause(self, bucket: RateBucket, seconds: float) -> None:
        now = self.rate_clock()
        key = (bucket.tag, bucket.name)
        self._rates[key] = gcra_pause(self._rates.get(key, now), now, seconds, bucket.tolerance_seconds)
