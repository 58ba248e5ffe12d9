"""The store protocol: the state gateway processes share (idempotency now; global limits, queues later).

A store is one of two backends behind the same protocol: ``memory://`` (one process) and ``redis://``
(every process sharing one Redis). Each family of operations is a small Protocol of its own, and
``Store`` is their union, so a later family (GCRA for global rate limits, streams for delivery queues)
is one more base class, not a change to the existing ones.

Every operation either answers or raises ``StoreUnavailable`` within the store's timeout: callers
decide what a missing store means for them (SPEC section 5: 503 where the route needs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


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


class Store(IdempotencyOps, Protocol):
    """Everything the gateway keeps outside one request. ``url`` is shown in /_gateway/ready, no secrets."""

    @property
    def url(self) -> str: ...

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
