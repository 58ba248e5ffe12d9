"""The Prometheus collector: reads the figures each part of the gateway keeps (on ``Services``) at
scrape time and turns them into families (the counting itself is ``gateway.observability.metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..services import Services
from .metrics import Histogram


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
