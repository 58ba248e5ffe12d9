"""The one rule for a shared store that fails: the feature runs on this process's own state for
``FALLBACK_SECONDS``, then asks the store again. Every feature with shared state (rate limits, circuit
breakers) follows it the same way: the failure is logged once per fallback and counted, and any
exception from the store counts (``StoreUnavailable``, or anything else a client library raised),
since a store problem must never become a caller's 500."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ..observability.logging import Logger

FALLBACK_SECONDS = 5.0


class StoreFallback:
    """Whether one feature instance is on local state now, and the bookkeeping when the store fails."""

    __slots__ = ("_counts", "_event", "_key", "_logger", "_now", "_until", "_what")

    def __init__(
        self,
        *,
        event: str,
        what: str,
        key: tuple[str, str],
        counts: Counter[str],
        logger: Logger,
        now: Callable[[], float],
    ) -> None:
        self._event = event  # e.g. "ratelimit_store_unavailable"
        self._what = what  # e.g. "limit": "using this process's own limit for 5s"
        self._key = key  # (log field, value): ("vendor", "stripe")
        self._counts = counts  # key value -> times the store failed (a feature's own counter)
        self._logger = logger
        self._now = now
        self._until = 0.0

    @property
    def active(self) -> bool:
        """On local state now (the store failed less than FALLBACK_SECONDS ago)."""
        return self._now() < self._until

    def failed(self, exc: Exception) -> None:
        self._until = self._now() + FALLBACK_SECONDS
        field, value = self._key
        self._counts[value] += 1
        self._logger.event(
            self._event,
            level="error",
            **{field: value},
            detail=f"using this process's own {self._what} for {FALLBACK_SECONDS:g}s: {exc}",
        )
