"""The Prometheus collector: asks everything that owns metrics (``Services.reporters()``) for its
families at scrape time and turns them into Prometheus families (the counting itself is each feature's,
with ``gateway.observability.metrics``' types)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..services import Services
from .metrics import Family


def _metric(family: Family) -> Metric:
    name, doc, kind, labels, samples = family
    metric: Metric
    if kind == "histogram":
        metric = HistogramMetricFamily(name, doc, labels=list(labels))
        for key, histogram in sorted(samples.items()):
            metric.add_metric([key], histogram.cumulative(), histogram.sum)
        return metric
    metric = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, labels=list(labels))
    for key, value in sorted(samples.items()):
        metric.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return metric


class GatewayCollector(Collector):
    """Reads the figures on Services at scrape time; ``services`` is a callable so a reload is seen."""

    def __init__(self, services: Callable[[], Services]) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        for reporter in self.services().reporters():
            for family in reporter.families():
                yield _metric(family)


def registry_for(services: Callable[[], Services]) -> CollectorRegistry:
    """A registry of the gateway's own (not the process-global one, so tests can run many apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(services))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
