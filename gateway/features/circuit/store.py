"""Circuit breaker state in the store: one breaker per vendor, shared by every process on one store.

The state machine (``gateway.features.circuit.policy`` drives it, this module keeps it):

- closed: calls are counted in ``CIRCUIT_BUCKETS`` buckets spanning ``window_seconds``. When a report
  brings the window to at least ``min_requests`` calls, ``failure_ratio`` of them failures, it opens.
- open until ``open_until``: nobody calls the vendor.
- after that, half-open: the first ``circuit_probe`` takes the probe lease (``probe_until``, owned by
  a token) and calls the vendor; everyone else is still refused. The probe's ``circuit_settle``
  closes the breaker (success, the window starts empty), opens it again for ``open_seconds``
  (failure), or hands the lease back (the probe never reached the vendor). A probe whose process died
  loses its lease after ``lease_seconds`` and the next caller probes.

Counts reported while open or half-open are dropped: only the probe speaks for the vendor then.
The memory backend here and the Redis script (``redis_store.py``) implement the same rules.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

CIRCUIT_BUCKETS = 10
CircuitStateName = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitSettings:
    failure_ratio: float
    min_requests: int
    window_seconds: float
    open_seconds: float

    @property
    def bucket_seconds(self) -> float:
        return self.window_seconds / CIRCUIT_BUCKETS


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitView:
    """What a store operation found or did.

    ``wait_seconds``: while open, how long until a probe may go; while half-open with a probe out, how
    long its lease still runs. ``changed``: this very call opened or closed the breaker. ``probe``: the
    caller holds the probe lease. ``requests``/``failures``: the window's counts when it opened.
    """

    state: CircuitStateName
    wait_seconds: float = 0.0
    changed: bool = False
    probe: bool = False
    requests: int = 0
    failures: int = 0


CLOSED = CircuitView(state="closed")
Outcome = Literal["success", "failure", "none"]


class CircuitOps(Protocol):
    async def circuit_report(
        self, vendor: str, settings: CircuitSettings, *, successes: int, failures: int
    ) -> CircuitView:
        """Add calls to the window (nothing, to just read the state); may open the breaker."""
        ...

    async def circuit_probe(
        self, vendor: str, settings: CircuitSettings, *, token: str, lease_seconds: float
    ) -> CircuitView:
        """Once the open period is over: take the probe lease for ``token`` (``probe`` is True) if nobody
        holds it. Answers "closed" if the breaker closed meanwhile."""
        ...

    async def circuit_settle(
        self, vendor: str, settings: CircuitSettings, *, token: str, outcome: Outcome
    ) -> CircuitView:
        """The probe's result: close, open again, or (``none``) give the lease back. A token that no
        longer holds the lease changes nothing."""
        ...


@dataclass(slots=True)
class _Breaker:
    buckets: dict[int, list[int]] = field(default_factory=dict)  # index -> [successes, failures]
    open_until: float = 0.0  # monotonic; 0: closed
    probe_until: float = 0.0
    probe_token: str = ""


class MemoryCircuits:
    """``CircuitOps`` in this process's memory (the memory store, and a Redis store's fallback)."""

    def __init__(self) -> None:
        self._circuits: dict[str, _Breaker] = {}

    def _breaker(self, vendor: str) -> _Breaker:
        circuits = self._circuits
        breaker = circuits.get(vendor)
        if breaker is None:
            breaker = circuits[vendor] = _Breaker()
        return breaker

    async def circuit_report(
        self, vendor: str, settings: CircuitSettings, *, successes: int, failures: int
    ) -> CircuitView:
        now = time.monotonic()
        b = self._breaker(vendor)
        if b.open_until:
            return _view(b, now)
        index = math.floor(now / settings.bucket_seconds)
        if successes or failures:
            counts = b.buckets.setdefault(index, [0, 0])
            counts[0] += successes
            counts[1] += failures
        total = fails = 0
        for i in list(b.buckets):
            if i <= index - CIRCUIT_BUCKETS:
                del b.buckets[i]
            else:
                total += sum(b.buckets[i])
                fails += b.buckets[i][1]
        if (
            (successes or failures)
            and total >= settings.min_requests
            and fails >= settings.failure_ratio * total
        ):
            b.buckets.clear()
            b.open_until = now + settings.open_seconds
            return CircuitView(
                state="open", wait_seconds=settings.open_seconds, changed=True, requests=total, failures=fails
            )
        return CLOSED

    async def circuit_probe(
        self, vendor: str, settings: CircuitSettings, *, token: str, lease_seconds: float
    ) -> CircuitView:
        now = time.monotonic()
        b = self._breaker(vendor)
        if not b.open_until or now < b.open_until or now < b.probe_until:
            return _view(b, now)
        b.probe_until = now + lease_seconds
        b.probe_token = token
        return CircuitView(state="half_open", probe=True)

    async def circuit_settle(
        self, vendor: str, settings: CircuitSettings, *, token: str, outcome: Outcome
    ) -> CircuitView:
        now = time.monotonic()
        b = self._breaker(vendor)
        if not b.open_until or b.probe_token != token or now >= b.probe_until:
            return _view(b, now)
        b.probe_until, b.probe_token = 0.0, ""
        if outcome == "success":
            b.open_until = 0.0
            b.buckets.clear()
            return CircuitView(state="closed", changed=True)
        if outcome == "failure":
            b.open_until = now + settings.open_seconds
            return CircuitView(state="open", wait_seconds=settings.open_seconds, changed=True)
        return CircuitView(state="half_open")


def _view(b: _Breaker, now: float) -> CircuitView:
    if not b.open_until:
        return CLOSED
    if now < b.open_until:
        return CircuitView(state="open", wait_seconds=b.open_until - now)
    return CircuitView(state="half_open", wait_seconds=max(0.0, b.probe_until - now))
