"""Shared rate schedules in the store: GCRA, one theoretical arrival time per limit.

``RateLimitOps`` is the protocol; ``MemoryRates`` here and ``RedisRates`` (``redis_store.py``) run the
same rule (``gcra``), which the per-process limiter in ``policy.py`` runs too, so every scope behaves
alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


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
    if tat < now:  # not max(): a builtin call costs more than the rest of this function
        tat = now
    due = tat - tolerance
    if due - now > GCRA_SLACK_SECONDS:
        return due - now, tat
    return 0.0, tat + interval


def gcra_pause(tat: float, now: float, seconds: float, tolerance: float) -> float:
    """The schedule after a vendor asked for ``seconds`` of quiet: nothing is due before ``now + seconds``,
    and from then on requests go at the pace, without the burst a long pause would otherwise save up."""
    return max(tat, now + seconds + tolerance)


class RateLimitOps(Protocol):
    async def take(self, bucket: RateBucket) -> float:
        """Take the bucket's next slot if it is due: 0.0. Otherwise take nothing and return the seconds
        until one is due (the caller waits that long and asks again)."""
        ...

    async def pause(self, bucket: RateBucket, seconds: float) -> None:
        """Let nothing through ``bucket`` for ``seconds`` from now (the vendor said Retry-After)."""
        ...


class MemoryRates:
    """This process's schedules: (tag, name) -> theoretical arrival time, one entry per configured limit."""

    def __init__(self) -> None:
        self._tats: dict[tuple[str, str], float] = {}
        # The schedules' clock (monotonic seconds); tests give it the limiters' hand-driven clock.
        self.clock: Callable[[], float] = time.monotonic

    async def take(self, bucket: RateBucket) -> float:
        now = self.clock()
        key = (bucket.tag, bucket.name)
        wait, tat = gcra(self._tats.get(key, now), now, bucket.interval_seconds, bucket.tolerance_seconds)
        self._tats[key] = tat
        return wait

    async def pause(self, bucket: RateBucket, seconds: float) -> None:
        now = self.clock()
        key = (bucket.tag, bucket.name)
        self._tats[key] = gcra_pause(self._tats.get(key, now), now, seconds, bucket.tolerance_seconds)
