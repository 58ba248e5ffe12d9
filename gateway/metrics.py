"""Metrics (SPEC section 11): counted in plain dicts on the hot path, exported by a collector at scrape.

A request costs a few dict and list updates (``RequestMetrics.observe``), not a prometheus_client call
per series: the ``GatewayCollector`` turns the figures every part of the gateway keeps on ``Services``
into Prometheus families only when ``/_gateway/metrics`` is read. Labels are vendor, route and method
names from the config (unknown vendors are counted under ``-``) and status codes: never secrets, never
anything a caller can invent, so the number of series stays bounded.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .pipeline import Services

# Whole-request and upstream latency buckets (seconds, upper bounds; one more count for +Inf).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_VENDOR = "-"


class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf), their sum and number."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

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


def _histogram(name: str, doc: str, series: dict[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["vendor"])
    for vendor, histogram in sorted(series.items()):
        family.add_metric([vendor], histogram.cumulative(), histogram.sum)
    return family


def _counter(name: str, doc: str, labels: list[str], values: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([str(part) for part in key], value)
    return family


class GatewayCollector(Collector):
    """Reads the figures on Services at scrape time; ``services`` is a callable so a reload is seen."""

    def __init__(self, services: Callable[[], Services]) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        services = self.services()
        m = services.metrics
        yield _counter(
            "gateway_requests",
            "Requests answered, by vendor, route, method and status.",
            ["vendor", "route", "method", "status"],
            m.requests,
        )
        yield _histogram(
            "gateway_request_duration_seconds", "Whole request, as the caller saw it.", m.duration
        )
        yield _histogram("gateway_upstream_duration_seconds", "Time spent waiting on the vendor.", m.upstream)
        yield _counter(
            "gateway_request_bytes", "Request body bytes sent on to vendors.", ["vendor"], _single(m.bytes_in)
        )
        yield _counter(
            "gateway_response_bytes", "Response body bytes sent to callers.", ["vendor"], _single(m.bytes_out)
        )
        limits = services.ratelimits
        yield _histogram(
            "gateway_ratelimit_wait_seconds",
            "Time admitted requests waited in a rate-limit queue.",
            limits.wait_seconds,
        )
        yield _counter(
            "gateway_ratelimit_rejected",
            "Requests refused with 429 by the gateway.",
            ["vendor"],
            _single(limits.rejected),
        )
        yield _counter(
            "gateway_idempotency",
            "Idempotency outcomes: stored, replayed, in_flight, mismatch and more.",
            ["vendor", "outcome"],
            services.idempotency_outcomes,
        )
        yield _counter(
            "gateway_vendor_deprecations",
            "Vendor answers carrying Deprecation or Sunset, by vendor and route.",
            ["vendor", "route"],
            services.deprecations.counts(),
        )
        yield _counter(
            "gateway_response_schema_failures",
            "Vendor answers that failed their response schema in report mode.",
            ["vendor", "route"],
            services.response_schema_failures,
        )
        yield _counter(
            "gateway_retries",
            "Vendor calls sent again by the retry policy (callers' requests and deliveries), by vendor and "
            "reason: the status code, connection or timeout.",
            ["vendor", "reason"],
            services.retries.sent,
        )
        circuits = services.circuits.open_state()
        yield _gauge(
            "gateway_circuit_open",
            "1 while the vendor's circuit breaker is open or half-open here.",
            circuits,
        )
        deliveries = services.deliveries
        vendors = set(circuits) | set(deliveries.dead)
        yield _gauge(
            "gateway_dlq_depth",
            "Dead letters per vendor (read from the store every few seconds).",
            {vendor: deliveries.dead.get(vendor, 0) for vendor in vendors},
        )
        outcomes = {
            (vendor, outcome): count
            for outcome, counts in (
                ("accepted", deliveries.accepted),
                ("delivered", deliveries.delivered),
                ("retried", deliveries.retried),
                ("dead_lettered", deliveries.dead_lettered),
            )
            for vendor, count in counts.items()
        }
        yield _counter(
            "gateway_deliveries",
            "Async deliveries by this process: accepted (202), delivered, retried, dead_lettered.",
            ["vendor", "outcome"],
            outcomes,
        )
        queued = GaugeMetricFamily(
            "gateway_delivery_queue_depth",
            "Deliveries queued or in progress, for every gateway on the store.",
        )
        queued.add_metric([], deliveries.pending)
        yield queued


def _gauge(name: str, doc: str, values: Mapping[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["vendor"])
    for vendor, value in sorted(values.items()):
        family.add_metric([vendor], value)
    return family


def _single(values: Mapping[str, int]) -> dict[tuple[str], int]:
    return {(key,): value for key, value in values.items()}


def registry_for(services: Callable[[], Services]) -> CollectorRegistry:
    """A registry of the gateway's own (not the process-global one, so tests can run many apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(services))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
