"""Webhook event ids in the store: which events were published, and which are being published now.

``WebhookOps`` is the protocol; ``MemoryWebhooks`` here and ``RedisWebhooks`` (``redis_store.py``) keep
the same rules. An event id is first *claimed* for a short lease by the request publishing it, then
marked *published* for ``dedupe_seconds``; a publish that failed *releases* it so the vendor's retry
may publish. A claim whose owner died frees itself when its lease runs out. So any number of
concurrent duplicates, across every process sharing the store, publish at most once.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

from ...observability.metrics import Counts

# What a claim found: the caller now holds the id, the event was published already, or another
# request holds the id and is publishing it right now.
ClaimResult = Literal["claimed", "published", "in_flight"]

SWEEP_INTERVAL_SECONDS = 30.0


class WebhookOps(Protocol):
    """Every operation answers or raises ``StoreUnavailable`` within the store's timeout."""

    async def webhook_claim(
        self, webhook: str, event_id: str, *, owner: str, lease_seconds: float
    ) -> ClaimResult: ...

    async def webhook_published(self, webhook: str, event_id: str, *, keep_seconds: float) -> None:
        """The event is on the bus: duplicates are answered without publishing for ``keep_seconds``."""
        ...

    async def webhook_release(self, webhook: str, event_id: str, *, owner: str) -> None:
        """The publish failed: forget ``owner``'s claim (nothing if it no longer holds it)."""
        ...


class MemoryWebhooks:
    """This process's event ids. Each operation runs between two awaits, so it is atomic on the loop."""

    def __init__(self) -> None:
        # (webhook, event id) -> (owner, or "" once published; expires, monotonic)
        self._ids: dict[tuple[str, str], tuple[str, float]] = {}
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS

    def _live(self, key: tuple[str, str], now: float) -> tuple[str, float] | None:
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_SECONDS
            for stale in [k for k, (_, expires) in self._ids.items() if expires <= now]:
                del self._ids[stale]
        entry = self._ids.get(key)
        if entry is not None and entry[1] <= now:
            del self._ids[key]
            return None
        return entry

    async def webhook_claim(
        self, webhook: str, event_id: str, *, owner: str, lease_seconds: float
    ) -> ClaimResult:
        now = time.monotonic()
        key = (webhook, event_id)
        entry = self._live(key, now)
        if entry is None or entry[0] == owner:
            self._ids[key] = (owner, now + lease_seconds)
            return "claimed"
        return "published" if entry[0] == "" else "in_flight"

    async def webhook_published(self, webhook: str, event_id: str, *, keep_seconds: float) -> None:
        self._ids[(webhook, event_id)] = ("", time.monotonic() + keep_seconds)

    async def webhook_release(self, webhook: str, event_id: str, *, owner: str) -> None:
        key = (webhook, event_id)
        entry = self._live(key, time.monotonic())
        if entry is not None and entry[0] == owner:
            del self._ids[key]

    def clear(self) -> None:
        self._ids.clear()


def webhook_counts() -> Counts:
    """(webhook, outcome) -> count: gateway_webhooks_total (published, duplicate, rejected, unavailable)."""
    return Counts(
        "gateway_webhooks",
        "Webhook requests by outcome: published, duplicate, rejected, unavailable.",
        ("webhook", "outcome"),
    )
