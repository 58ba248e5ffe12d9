"""What a fault is, how a caller asks for one, and the counts metrics export.

A vendor (or route) with ``faults`` gets, for each vendor call (each attempt), independent draws as in
Envoy's fault filter: with ``delay_percent`` a wait of ``delay_seconds`` first; then one draw decides
between an abort (``abort_percent``: answered ``abort_status`` as if by the vendor), a reset
(``reset_percent``: a connection error) or the real call. With ``header_control``, a request carrying
``X-Gateway-Fault`` gets exactly what it asks for on every attempt instead of the draws:
``abort=503``, ``delay=0.2``, ``reset``, or a delay with one of the others (``delay=0.2, abort=503``).

The draws come from an unseeded ``random.Random`` (os.urandom): the configured share holds over many
requests, never a fixed sequence.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ...errors import BadRequest
from ...observability.metrics import Counts

FAULT_HEADER = "X-Gateway-Fault"

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


def parse_fault_header(values: list[str]) -> Plan:
    """The caller's ``X-Gateway-Fault`` (every field, comma-separated items); BadRequest if malformed."""
    delay = 0.0
    abort: int | None = None
    reset = False
    seen: set[str] = set()
    usage = "use abort=STATUS, delay=SECONDS or reset (a delay may go with one of the others)"
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        name, sep, raw = (piece.strip() for piece in item.partition("="))
        name = name.lower()
        if name in seen:
            raise BadRequest(f"{FAULT_HEADER}: {name} is given twice")
        seen.add(name)
        if name == "abort":
            if not (raw.isascii() and raw.isdigit()) or not 400 <= int(raw) <= 599:
                raise BadRequest(
                    f"{FAULT_HEADER}: abort needs a 4xx or 5xx status, as abort=503, not {item!r}"
                )
            abort = int(raw)
        elif name == "delay":
            try:
                delay = float(raw)
            except ValueError:
                delay = math.nan
            if not (math.isfinite(delay) and delay > 0):
                raise BadRequest(
                    f"{FAULT_HEADER}: delay needs seconds greater than 0, as delay=0.2, not {item!r}"
                )
        elif name == "reset" and not sep:
            reset = True
        else:
            raise BadRequest(f"{FAULT_HEADER}: unknown fault {item[:40]!r}; {usage}")
    if abort is not None and reset:
        raise BadRequest(f"{FAULT_HEADER}: abort and reset exclude each other; ask for one")
    if not seen:
        raise BadRequest(f"{FAULT_HEADER}: is empty; {usage}")
    return Plan(delay_seconds=delay, abort_status=abort, reset=reset)


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
