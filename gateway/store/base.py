"""The store protocol: the state gateway processes share (idempotency records, global rate limits,
circuit breakers, the delivery queue and its dead letters).

A store is one of two backends behind the same protocol: ``memory://`` (one process) and ``redis://``
(every process sharing one Redis). Each feature that keeps state owns its part, in its own folder: a
protocol with its memory backend (``store.py``) and its Redis backend (``redis_store.py``). ``Store``
composes them (``store.idempotency``, ``store.rates``, ``store.circuits``, ``store.deliveries``), so a
new feature's state is one more attribute, not a change to the others.

Every operation either answers or raises ``StoreUnavailable`` within the store's timeout: callers
decide what a missing store means for them (docs/operations.md: 503 where the route needs it).
"""

from __future__ import annotations

from typing import Protocol

from ..bus.base import StreamOps
from ..features.circuit.store import CircuitOps
from ..features.delivery.store import DeliveryOps
from ..features.idempotency.store import IdempotencyOps
from ..features.ratelimit.store import RateLimitOps
from ..features.webhooks.store import WebhookOps


class StoreUnavailable(Exception):
    """The store did not answer (down, timed out, refused the command); the message says which."""


class Store(Protocol):
    """Everything the gateway keeps outside one request. ``url`` is shown in /_gateway/ready, no secrets."""

    @property
    def idempotency(self) -> IdempotencyOps: ...

    @property
    def rates(self) -> RateLimitOps: ...

    @property
    def circuits(self) -> CircuitOps: ...

    @property
    def deliveries(self) -> DeliveryOps: ...

    @property
    def webhooks(self) -> WebhookOps: ...

    @property
    def streams(self) -> StreamOps | None:
        """Redis Streams to publish events on (``bus = "redis"``); None: this store has none (memory)."""
        ...

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
