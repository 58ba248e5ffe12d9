"""The store protocol: the state gateway processes share (idempotency records, global rate limits,
circuit breakers, the delivery queue and its dead letters).

A store is one of two backends behind the same protocol: ``memory://`` (one process) and ``redis://``
(every process sharing one Redis). Each family of operations is a small Protocol of its own, and
``Store`` is their union, so a new family is one more base class, not a change to the existing ones:
``IdempotencyOps`` and ``RateLimitOps`` here, ``CircuitOps`` (``store.circuits``) and ``DeliveryOps``
(``store.deliveries``), whose backends are mixins of ``MemoryStore`` and ``RedisStore``.

Every operation either answers or raises ``StoreUnavailable`` within the store's timeout: callers
decide what a missing store means for them (SPEC section 5: 503 where the route needs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ..features.circuit.store import CircuitOps
from ..features.delivery.store import DeliveryOps


class StoreUnavailable(Exception):
    """The store did not answer (down, timed out, refused the command); the message says which."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RateBucket:
    """One rate limit's schedule (GCRA): one request every ``interval_seconds``, ``burst`` at once at most.

    ``tag`` names what the limit protects (the vendor, or ``client:NAME``) and becomes the Redis hash
    tag, so every key of one vendor lives in one Redis Cluster slot; ``name`` tells its limits apart.
    """

    tag: str
    name: str
    interval_seconds: float
    burst: int

    @property
    def tolerance_seconds(self) -> float:
        """How far ahead of now the schedule may run: ``burst`` requests at once, then the pace."""
        return (self.burst - 1) * self.interval_seconds


# A turn this close to due counts as due: sums of float intervals land a hair past the exact instant
# (1000 + 1/3 + 1/3 - 2/3 > 1000), which would refuse the last request of a burst that arrives at once.
GCRA_SLACK_SECONDS = 1e-9


def gcra(tat: float, now: float, interval: float, tolerance: float) -> tuple[float, float]:
    """One GCRA step: (seconds until a request is due, 0.0 if it goes now; the new theoretical arrival time).

    ``tat`` is when the schedule would next be idle. A request goes when ``tat - tolerance <= now`` and
    moves ``tat`` one interval on; otherwise nothing changes. The memory store, the local limiter and
    the Redis script all run this same rule, so every scope behaves alike.
    """
    tat = max(tat, now)
    due = tat - tolerance
    if due - now > GCRA_SLACK_SECONDS:
        return due - now, tat
    return 0.0, tat + interval


def gcra_pause(tat: float, now: float, seconds: float, tolerance: float) -> float:
    """The schedule after a vendor asked for ``seconds`` of quiet: nothing is due before ``now + seconds``,
    and from then on requests go at the pace, without the burst a long pause would otherwise save up."""
    return max(tat, now + seconds + tolerance)


class RateLimitOps(Protocol):
    async def rate_take(self, bucket: RateBucket) -> float:
        """Take the bucket's next slot if it is due: 0.0. Otherwise take nothing and return the seconds
        until one is due (the caller waits that long and asks again)."""
        ...

    async def rate_pause(self, bucket: RateBucket, seconds: float) -> None:
        """Let nothing through ``bucket`` for ``seconds`` from now (the vendor said Retry-After)."""
        ...


class Store(IdempotencyOps, RateLimitOps, Protocol):
    """Everything the gateway keeps outside one request. ``url`` is shown in /_gateway/ready, no secrets.
    Features with a backend of their own are composed in: ``circuits`` and ``deliveries``."""

    @property
    def circuits(self) -> CircuitOps: ...

    @property
    def deliveries(self) -> DeliveryOps: ...

    @property
    def url(self) -> str: ...

    @property
    def shared(self) -> bool:
        """Whether other gateway processes see this state (Redis), or only this one (memory)."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable otherwise."""
        ...

    async def close(self) -> None: ...


def redact_url(url: str) -> str:
    """``redis://user:secret@host/0`` -> ``redis://user:***@host/0``: a store URL may carry a password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hostpart}" if user else f"{scheme}://***@{hostpart}"
