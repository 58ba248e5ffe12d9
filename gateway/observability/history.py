"""The short history alerts and the dashboard read: per vendor, bounded ring buffers of what happened.

Nothing here runs per request. Every second the monitor (``observability.monitor``) reads the
cumulative figures the features already keep (``Reading``: requests by status class, the gateway's
429s, retries, the latency histogram's bucket counts, and three gauges: rate-limit queue depth,
circuit state, dead letters) and ``History.record`` writes that reading into the slot of that instant.
Two rings per vendor: one slot a second for the last five minutes, one slot every ten seconds for the
last hour (``ALERT_MAX_WINDOW_SECONDS``), each a handful of flat ``array``s, so a vendor's history
costs a fixed ~125 KiB however busy it is (``History.nbytes``).

Slots hold the cumulative figures, so a window is one subtraction: the reading at its end less the
reading just before its start (or the vendor's first reading, when the history is younger than the
window), whatever its length. Its latency quantiles are estimated from the bucket counts the way
Prometheus' ``histogram_quantile`` does (linear within the bucket), so ``p99`` here and in
``deploy/prometheus/alerts.yml`` agree.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..config.model import ALERT_MAX_WINDOW_SECONDS
from .metrics import DURATION_BUCKETS

# (seconds per slot, slots covered): the finest ring that covers a window is the one read. Each ring
# has one slot more, for the reading just before its oldest window starts.
RINGS = ((1.0, 300), (10.0, int(ALERT_MAX_WINDOW_SECONDS // 10)))
HISTORY_SECONDS = ALERT_MAX_WINDOW_SECONDS
_COUNTERS = 5  # requests, client_errors, server_errors, rejected, retries
_GAUGES = 3  # queued, circuit_open, dead_letters


class Reading(NamedTuple):
    """One vendor's figures at one instant: counters since the process started, gauges as they are."""

    requests: int  # answers of every status (caller-left 499s too)
    client_errors: int  # 4xx
    server_errors: int  # 5xx, the vendor's and the gateway's own
    rejected: int  # the gateway's own 429s (rate limits)
    retries: int  # retries sent to the vendor
    latency: Sequence[int]  # whole-request histogram counts per DURATION_BUCKETS bucket, +Inf last
    queued: int  # requests waiting in the vendor's rate-limit queues
    circuit_open: int  # 1 while the breaker is open or half-open
    dead_letters: int


@dataclass(slots=True)
class Figures:
    """What happened to one vendor over ``seconds``; gauges as last seen in it (None: not sampled)."""

    seconds: float
    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    rejected: int = 0
    retries: int = 0
    latency: list[int] = field(default_factory=list)
    queued: int | None = None
    circuit_open: int | None = None
    dead_letters: int | None = None
    sampled: bool = False  # some slot of the window was written

    def ratio(self, count: int) -> float:
        """``count`` over all answers (0.0 when there were none)."""
        return count / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        return estimate_quantile(q, self.latency, DURATION_BUCKETS)


def estimate_quantile(q: float, counts: Sequence[int], bounds: Sequence[float]) -> float | None:
    """The q-quantile of observations counted per bucket (``counts``: one per bound, +Inf last), linear
    within its bucket as Prometheus' ``histogram_quantile``; past the last bound, that bound. None for
    no observations."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if count and running + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - running) / count
        running += count
    return bounds[-1]


def _ring_index(seconds: float) -> int:
    for i, (step, size) in enumerate(RINGS):
        if seconds <= step * size:
            return i
    return len(RINGS) - 1


class _Ring:
    """``size`` slots of ``step`` seconds; slot i holds the last reading of epoch ``epochs[i]``
    (time // step): counters and latency buckets cumulative, gauges as they were."""

    __slots__ = ("counts", "epochs", "gauges", "latency", "size", "step", "width")

    def __init__(self, step: float, size: int, width: int) -> None:
        self.step = step
        self.size = size
        self.width = width  # latency buckets per slot
        self.epochs = array("q", [-1]) * size
        self.counts = array("Q", bytes(8 * _COUNTERS * size))
        self.latency = array("Q", bytes(8 * width * size))
        self.gauges = array("q", bytes(8 * _GAUGES * size))

    def put(self, epoch: int, counts: array[int], latency: array[int], gauges: array[int]) -> None:
        i = epoch % self.size
        self.epochs[i] = epoch
        self.counts[i * _COUNTERS : (i + 1) * _COUNTERS] = counts
        self.latency[i * self.width : (i + 1) * self.width] = latency
        self.gauges[i * _GAUGES : (i + 1) * _GAUGES] = gauges

    def find(self, epoch: int, oldest: int) -> int | None:
        """The index of the latest slot written at ``epoch`` or before, back to ``oldest``."""
        for e in range(epoch, max(oldest, epoch - self.size + 1) - 1, -1):
            i = e % self.size
            if self.epochs[i] == e:
                return i
        return None

    def between(self, first: int, last: int, base: _Vendor) -> Figures:
        """What happened in the slots of epochs ``first`` to ``last``, both included."""
        out = Figures(seconds=(last - first + 1) * self.step)
        end = self.find(last, first)
        if end is None:
            out.latency = [0] * self.width
            return out
        out.sampled = True
        start = self.find(first - 1, last - self.size + 1)
        if start is not None:
            was_counts = self.counts[start * _COUNTERS : (start + 1) * _COUNTERS]
            was_latency = self.latency[start * self.width : (start + 1) * self.width]
        elif base.first_epoch[self.step] >= first - 1:  # the history began in the window
            was_counts, was_latency = base.first_counts, base.first_latency
        else:  # no sample for a ring's length before the window: count from its first sample
            start = next(i for e in range(first, last + 1) if (i := self.find(e, e)) is not None)
            was_counts = self.counts[start * _COUNTERS : (start + 1) * _COUNTERS]
            was_latency = self.latency[start * self.width : (start + 1) * self.width]
        now_counts = self.counts[end * _COUNTERS : (end + 1) * _COUNTERS]
        now_latency = self.latency[end * self.width : (end + 1) * self.width]
        deltas = [a - b if a > b else 0 for a, b in zip(now_counts, was_counts, strict=True)]
        out.requests, out.client_errors, out.server_errors, out.rejected, out.retries = deltas
        out.latency = [a - b if a > b else 0 for a, b in zip(now_latency, was_latency, strict=True)]
        out.queued, out.circuit_open, out.dead_letters = self.gauges[end * _GAUGES : (end + 1) * _GAUGES]
        return out

    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.epochs, self.counts, self.latency, self.gauges))


class _Vendor:
    __slots__ = ("first_counts", "first_epoch", "first_latency", "last", "rings")

    def __init__(self, now: float, first: Reading) -> None:
        self.last = first
        width = len(first.latency)
        self.rings = tuple(_Ring(step, size + 1, width) for step, size in RINGS)
        # The baseline of a window that reaches back before the history began.
        self.first_counts = array("Q", _counters(first))
        self.first_latency = array("Q", first.latency)
        self.first_epoch = {step: int(now // step) for step, _ in RINGS}


def _counters(reading: Reading) -> tuple[int, ...]:
    return (reading.requests, reading.client_errors, reading.server_errors, reading.rejected, reading.retries)


class History:
    """Every configured vendor's rings; ``record`` is called by one task, readers run on the same loop."""

    def __init__(self) -> None:
        self._vendors: dict[str, _Vendor] = {}
        self.now: float | None = None  # the clock time of the last record: windows end there

    def record(self, now: float, readings: Mapping[str, Reading]) -> None:
        """Keep each vendor's reading at ``now``. A vendor seen for the first time starts from its
        reading; vendors not in ``readings`` (gone with a reload) are forgotten."""
        for name in [name for name in self._vendors if name not in readings]:
            del self._vendors[name]
        for name, reading in readings.items():
            vendor = self._vendors.get(name)
            if vendor is None or len(reading.latency) != len(vendor.last.latency):
                vendor = self._vendors[name] = _Vendor(now, reading)
            vendor.last = reading
            counts = array("Q", _counters(reading))
            latency = array("Q", reading.latency)
            gauges = array("q", (reading.queued, reading.circuit_open, reading.dead_letters))
            for ring in vendor.rings:
                ring.put(int(now // ring.step), counts, latency, gauges)
        self.now = now

    def vendors(self) -> Iterable[str]:
        return self._vendors.keys()

    def latest(self, vendor: str) -> Reading | None:
        """The vendor's last reading (its gauges as they are now)."""
        entry = self._vendors.get(vendor)
        return entry.last if entry is not None else None

    def window(self, vendor: str, seconds: float) -> Figures:
        """The vendor's last ``seconds`` (rounded to whole slots of the ring that covers them)."""
        entry = self._vendors.get(vendor)
        if entry is None or self.now is None:
            return Figures(seconds=seconds)
        ring = entry.rings[_ring_index(seconds)]
        last = int(self.now // ring.step)
        slots = max(1, round(seconds / ring.step))
        return ring.between(last - slots + 1, last, entry)

    def series(self, vendor: str, seconds: float, points: int) -> list[Figures]:
        """The vendor's last ``seconds`` cut into at most ``points`` windows of whole slots, oldest
        first (for sparklines); fewer when the window has fewer slots."""
        step = RINGS[_ring_index(seconds)][0]
        slots = max(1, round(seconds / step))
        per = -(-slots // points)  # slots per point, rounded up: the points cover the whole window
        count = slots // per
        entry = self._vendors.get(vendor)
        if entry is None or self.now is None:
            return [Figures(seconds=per * step) for _ in range(count)]
        ring = entry.rings[_ring_index(seconds)]
        first = int(self.now // step) - per * count + 1
        return [ring.between(first + p * per, first + (p + 1) * per - 1, entry) for p in range(count)]

    def nbytes(self) -> int:
        """The memory the rings hold (their arrays), for every vendor."""
        return sum(ring.nbytes() for vendor in self._vendors.values() for ring in vendor.rings)
