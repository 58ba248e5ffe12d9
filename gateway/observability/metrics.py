"""Metrics (docs/operations.md): counted in plain dicts on the hot path, exported by a collector at scrape.

A request costs a few dict and list updates (``RequestMetrics.observe``), not a prometheus_client call
per series. Each feature owns its counters and reports them as ``Family`` values (the ``Reporter``
protocol: one method, ``families()``); ``gateway.observability.collector`` turns those into Prometheus
families only when ``/_gateway/metrics`` is read. Labels are vendor, route and method
names from the config (unknown vendors are counted under ``-``) and status codes: never secrets, never
anything a caller can invent, so the number of series stays bounded.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple, Protocol

# Whole-request and upstream latency buckets (seconds, upper bounds; one more count for +Inf).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_VENDOR = "-"


class Family(NamedTuple):
    """One metric family as its owner reports it: ``samples`` maps label values (a tuple, or one string
    for one label) to a number, or to a ``Histogram`` for kind "histogram"."""

    name: str  # without the _total suffix of a counter
    doc: str
    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    samples: Mapping[Any, Any]


class Reporter(Protocol):
    def families(self) -> Iterator[Family]: ...


class Counts(Counter[tuple[str, ...]]):
    """A counter family a feature owns as a plain Counter keyed by label values, reporting itself."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        super().__init__()
        self.family = Family(name, doc, "counter", labels, self)

    def families(self) -> Iterator[Family]:
        yield self.family


class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf), their sum and number.

    An observation is one list item and the sum updated: the number is the counts' total, added up when
    read, so whoever counts zeros in bulk (the rate limit's waits) may add to ``counts[0]`` itself."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (upper bound, count of observations <= it), ending with +Inf."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """An upper bound for the q-quantile (the bucket it falls in), for people; None if empty."""
        if not self.count:
            return None
        target = q * self.count
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            if running >= target:
                return bound
        return float("inf")


class RequestMetrics:
    """Per-request figures: gateway_requests_total, durations and bytes."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str, int]] = Counter()  # vendor, route, method, status
        self.duration: dict[str, Histogram] = {}
        self.upstream: dict[str, Histogram] = {}
        self.bytes_in: Counter[str] = Counter()
        self.bytes_out: Counter[str] = Counter()

    def start_series(self, vendors: Iterable[str]) -> None:
        """Each vendor's series exist from the start, at zero: a documented metric can be found (and
        alerted on) before its first request."""
        for vendor in vendors:
            self.duration.setdefault(vendor, Histogram(DURATION_BUCKETS))
            self.upstream.setdefault(vendor, Histogram(DURATION_BUCKETS))
            self.bytes_in[vendor] += 0
            self.bytes_out[vendor] += 0

    def families(self) -> Iterator[Family]:
        yield Family(
            "gateway_requests",
            "Requests answered, by vendor, route, method and status.",
            "counter",
            ("vendor", "route", "method", "status"),
            {tuple(map(str, key)): count for key, count in self.requests.items()},
        )
        yield Family(
            "gateway_request_duration_seconds",
            "Whole request, as the caller saw it.",
            "histogram",
            ("vendor",),
            self.duration,
        )
        yield Family(
            "gateway_upstream_duration_seconds",
            "Time spent waiting on the vendor.",
            "histogram",
            ("vendor",),
            self.upstream,
        )
        yield Family(
            "gateway_request_bytes",
            "Request body bytes sent on to vendors.",
            "counter",
            ("vendor",),
            self.bytes_in,
        )
        yield Family(
            "gateway_response_bytes",
            "Response body bytes sent to callers.",
            "counter",
            ("vendor",),
            self.bytes_out,
        )

    def observe(
        self,
        vendor: str,
        route: str,
        method: str,
        status: int,
        seconds: float,
        upstream_seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        self.requests[(vendor, route, method, status)] += 1
        if (histogram := self.duration.get(vendor)) is None:
            histogram = self.duration[vendor] = Histogram(DURATION_BUCKETS)
        histogram.observe(seconds)
        if upstream_seconds:
            if (upstream := self.upstream.get(vendor)) is None:
                upstream = self.upstream[vendor] = Histogram(DURATION_BUCKETS)
            upstream.observe(upstream_seconds)
        if bytes_in:
            self.bytes_in[vendor] += bytes_in
        if bytes_out:
            self.bytes_out[vendor] += bytes_out
