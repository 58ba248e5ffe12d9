"""What a fault is, how one is drawn, and the counts metrics export.

A vendor (or route) with ``faults`` gets, for each vendor call (each attempt), independent draws as in
Envoy's fault filter: with ``delay_percent`` a wait of ``delay_seconds`` first; then one draw decides
between an abort (``abort_percent``: answered ``abort_status`` as if by the vendor), a reset
(``reset_percent``: a connection error) or the real call.

The draws come from an unseeded ``random.Random`` (os.urandom): the configured share holds over many
requests, never a fixed sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ...observability.metrics import Counts

_random = random.Random()


def fault_counts() -> Counts:
    """(vendor, kind) -> faults injected; exported as gateway_faults_injected_total{vendor,kind}."""
    return Counts(
        "gateway_faults_injected",
        "Faults the gateway injected into vendor calls (fault injection, for chaos tests), by vendor and "
        "kind: abort, delay or reset.",
        ("vendor", "kind"),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """The faults for one vendor call: a delay first (0: none), then an abort status or a reset."""

    delay_seconds: float = 0.0
    abort_status: int | None = None
    reset: bool = False


NO_FAULT = Plan()


@dataclass(frozen=True, slots=True)
class Draws:
    """The configured shares as probabilities, drawn per vendor call."""

    delay: float  # probability of a delay
    delay_seconds: float
    abort: float  # probability of an abort
    abort_status: int
    reset: float  # probability of a reset (abort and reset exclude each other: abort + reset <= 1)

    def draw(self, rng: random.Random = _random) -> Plan:
        delay = self.delay_seconds if self.delay and rng.random() < self.delay else 0.0
        if self.abort or self.reset:
            u = rng.random()
            if u < self.abort:
                return Plan(delay_seconds=delay, abort_status=self.abort_status)
            if u < self.abort + self.reset:
                return Plan(delay_seconds=delay, reset=True)
        return Plan(delay_seconds=delay) if delay else NO_FAULT
