"""Idempotency records in the store: who holds a key, and the answer once the request completed.

``IdempotencyOps`` is the protocol; ``MemoryIdempotency`` here and ``RedisIdempotency``
(``redis_store.py``) keep the same rules, leases and expiry included, so a one-process gateway behaves
like a fleet. Only a claim's owner can renew, complete or release it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from ...observability.metrics import Counts

# Expired records are dropped when touched, and all of them at most this often, so memory stays
# bounded by what is live rather than by everything ever stored.
SWEEP_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyKey:
    """Who asked, of which vendor, with which key: records of two callers never meet."""

    vendor: str
    client: str | None  # None: an anonymous caller (no [clients] configured)
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResponse:
    """A completed request's answer as the caller saw it.

    ``body`` is None when the body was larger than the vendor's ``idempotency.max_body_bytes``: the
    key stays taken (the vendor acted on it) but the answer cannot be replayed.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyRecord:
    state: Literal["in_flight", "completed"]
    fingerprint: str
    owner: str  # the claim's owner token (meaningful while in flight)
    response: StoredResponse | None = None  # set when completed


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of ``claim``: either this owner now holds the key, or here is who does."""

    acquired: bool
    existing: IdempotencyRecord | None = None  # when not acquired: the record that is there


class IdempotencyOps(Protocol):
    """Every operation answers or raises ``StoreUnavailable`` within the store's timeout."""

    async def claim(
        self, key: IdempotencyKey, *, fingerprint: str, owner: str, lease_seconds: float
    ) -> Claim:
        """Atomically take ``key`` for ``owner`` for ``lease_seconds`` if nobody holds it.

        Claiming again with the same owner while in flight succeeds (a retried call is harmless).
        """
        ...

    async def extend(self, key: IdempotencyKey, *, owner: str, lease_seconds: float) -> bool:
        """Renew an in-flight lease; False when ``owner`` no longer holds it."""
        ...

    async def complete(
        self, key: IdempotencyKey, *, owner: str, response: StoredResponse, ttl_seconds: float
    ) -> bool:
        """Store the answer for ``ttl_seconds``; False (nothing written) when ``owner`` lost the lease."""
        ...

    async def release(self, key: IdempotencyKey, *, owner: str) -> bool:
        """Forget an in-flight claim so the caller may retry; False when ``owner`` did not hold it."""
        ...

    async def get(self, key: IdempotencyKey) -> IdempotencyRecord | None: ...


IDEMPOTENCY_OUTCOMES = ("stored", "replayed", "in_flight", "mismatch")  # the documented ones (there are more)


def outcome_counts() -> Counts:
    """(vendor, outcome) -> count, kept by the stage: gateway_idempotency_total."""
    return Counts(
        "gateway_idempotency",
        "Idempotency outcomes: stored, replayed, in_flight, mismatch and more.",
        ("vendor", "outcome"),
    )


class MemoryIdempotency:
    """This process's records. Operations never wait, so each runs between two awaits and is atomic
    with respect to the other requests on the event loop."""

    def __init__(self) -> None:
        self._records: dict[IdempotencyKey, tuple[IdempotencyRecord, float]] = {}  # record, expires
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS

    def clear(self) -> None:
        self._records.clear()

    def _live(self, key: IdempotencyKey, now: float) -> IdempotencyRecord | None:
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_SECONDS
            for stale in [k for k, (_, expires) in self._records.items() if expires <= now]:
                del self._records[stale]
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._records[key]
            return None
        return entry[0]

    async def claim(
        self, key: IdempotencyKey, *, fingerprint: str, owner: str, lease_seconds: float
    ) -> Claim:
        now = time.monotonic()
        record = self._live(key, now)
        if record is None or (record.state == "in_flight" and record.owner == owner):
            fresh = IdempotencyRecord(state="in_flight", fingerprint=fingerprint, owner=owner)
            self._records[key] = (fresh, now + lease_seconds)
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
        self._records[key] = (record, now + lease_seconds)
        return True

    async def complete(
        self, key: IdempotencyKey, *, owner: str, response: StoredResponse, ttl_seconds: float
    ) -> bool:
        now = time.monotonic()
        record = self._held(key, owner, now)
        if record is None:
            return False
        self._records[key] = (replace(record, state="completed", response=response), now + ttl_seconds)
        return True

    async def release(self, key: IdempotencyKey, *, owner: str) -> bool:
        if self._held(key, owner, time.monotonic()) is None:
            return False
        del self._records[key]
        return True

    async def get(self, key: IdempotencyKey) -> IdempotencyRecord | None:
        return self._live(key, time.monotonic())
