"""The Prometheus collector: asks everything that owns metrics (``Services.reporters()``) for its
families at scrape time and turns them into Prometheus families (the counting itself is each feature's,
with ``gateway.observability.metrics``' types).

With several worker processes (``gateway run --workers N``) a scrape reaches one of them, which answers
for all: its own live figures merged with the other workers' latest snapshots (``encode`` / ``decode``:
the families as JSON, written by each worker about once a second, see ``gateway.http.worker``). The
merge rule, here and nowhere else (``merge``): counters and histograms are summed; a gauge is summed
(a per-process figure) unless ``GAUGES_BY_MAX`` names it (a figure every worker reads from the same
shared state: the largest one counts) or ``GAUGES_BY_MIN`` does (a per-process 0/1 health figure: 1
only if every worker says 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..services import Services
from .metrics import Family, Histogram

# Gauges that are the same figure in every worker (not a per-process one), merged by taking the largest:
# a breaker is open if it is open in any worker (with a shared store every worker sees the one state);
# dead letters and queued deliveries are counted in the shared store, each worker reading it in turn;
# an alert is firing if it fires in any worker (each evaluates the rules on every worker's figures,
# so they agree but for a second or so; a sum would make one alert count 2).
GAUGES_BY_MAX = frozenset(
    {"gateway_circuit_open", "gateway_dlq_depth", "gateway_delivery_queue_depth", "gateway_alert_active"}
)
# Gauges that say whether each process is well (1) or not (0): merged, 1 only if every worker is.
GAUGES_BY_MIN = frozenset({"gateway_bus_connected"})
SNAPSHOT_FORMAT = 1


def _metric(family: Family) -> Metric:
    name, doc, kind, labels, samples = family
    metric: Metric
    if kind == "histogram":
        metric = HistogramMetricFamily(name, doc, labels=list(labels))
        for key, histogram in sorted(samples.items()):
            metric.add_metric(
                list(key) if isinstance(key, tuple) else [key], histogram.cumulative(), histogram.sum
            )
        return metric
    metric = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, labels=list(labels))
    for key, value in sorted(samples.items()):
        metric.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return metric


def _key(key: Any) -> tuple[str, ...]:
    return tuple(map(str, key)) if isinstance(key, tuple) else (str(key),)


def encode(families: Iterable[Family], **meta: Any) -> bytes:
    """One process's families as JSON (with ``meta``: who wrote it), for ``decode`` in another."""
    out = []
    for name, doc, kind, labels, samples in families:
        if kind == "histogram":
            values = [
                [_key(key), {"buckets": h.buckets, "counts": h.counts, "sum": h.sum}]
                for key, h in samples.items()
            ]
        else:
            values = [[_key(key), value] for key, value in samples.items()]
        out.append({"name": name, "doc": doc, "kind": kind, "labels": labels, "samples": values})
    return orjson.dumps({"format": SNAPSHOT_FORMAT, **meta, "families": out})


def decode(data: bytes) -> tuple[dict[str, Any], list[Family]]:
    """``encode``'s output back: (its meta fields, its families). Raises ValueError if it is not one."""
    try:
        document = orjson.loads(data)
        if document.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a metrics snapshot of format {SNAPSHOT_FORMAT}")
        families: list[Family] = []
        for f in document.pop("families"):
            samples: dict[tuple[str, ...], Any] = {}
            for key, value in f["samples"]:
                if f["kind"] == "histogram":
                    histogram = Histogram(tuple(value["buckets"]))
                    if len(value["counts"]) != len(histogram.counts):
                        raise ValueError(f"{f['name']}: bucket counts do not match the buckets")
                    histogram.counts = [int(c) for c in value["counts"]]
                    histogram.sum = float(value["sum"])
                    value = histogram
                elif not isinstance(value, int | float):
                    raise ValueError(f"{f['name']}: a sample is not a number")
                samples[tuple(key)] = value
            families.append(Family(f["name"], f["doc"], f["kind"], tuple(f["labels"]), samples))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a metrics snapshot: {exc}") from None
    return document, families


def _add_histogram(into: Histogram | None, other: Histogram) -> Histogram | None:
    """``into`` + ``other`` as a new Histogram (None when their buckets differ: they cannot be added)."""
    if into is not None and into.buckets != other.buckets:
        return None
    total = Histogram(other.buckets)
    for h in (into, other):
        if h is not None:
            total.counts = [a + b for a, b in zip(total.counts, h.counts, strict=True)]
            total.sum += h.sum
    return total


def merge(own: Iterable[Family], others: Iterable[Sequence[Family]]) -> list[Family]:
    """Several processes' families as one: ``own`` (live) first, in its order, then any family only
    the others have. Counters and histograms are summed per label set; gauges too, except those in
    ``GAUGES_BY_MAX``, which take the largest value, and in ``GAUGES_BY_MIN``, the smallest. A family
    reported with another kind or labels than ``own``'s (another version of the gateway), or a histogram
    with other buckets, is left out of the sum rather than mixed in."""
    merged: dict[str, Family] = {}
    for family in own:
        merged[family.name] = family._replace(samples={_key(k): v for k, v in family.samples.items()})
    for families in others:
        for family in families:
            mine = merged.get(family.name)
            if mine is None:
                merged[family.name] = mine = family._replace(samples={})
            elif (mine.kind, mine.labels) != (family.kind, family.labels):
                continue
            samples: dict[Any, Any] = dict(mine.samples)
            for key, value in family.samples.items():
                key = _key(key)
                if family.kind == "histogram":
                    total = _add_histogram(samples.get(key), value)
                    if total is not None:
                        samples[key] = total
                elif family.kind == "gauge" and family.name in GAUGES_BY_MAX:
                    samples[key] = max(samples.get(key, value), value)
                elif family.kind == "gauge" and family.name in GAUGES_BY_MIN:
                    samples[key] = min(samples.get(key, value), value)
                else:
                    samples[key] = samples.get(key, 0) + value
            merged[family.name] = mine._replace(samples=samples)
    return list(merged.values())


def retired(families: Iterable[Family]) -> list[Family]:
    """What of a process that stopped still counts: its counters and histograms (they only ever grow,
    so the merged ones must not drop when it goes). Its gauges described a process that is gone."""
    return [family for family in families if family.kind != "gauge"]


Peers = Callable[[], Iterable[Sequence[Family]]]


class GatewayCollector(Collector):
    """Reads the figures on Services at scrape time; ``services`` is a callable so a reload is seen.
    With ``peers`` (one of several workers: the others' families), they are merged in (``merge``)."""

    def __init__(self, services: Callable[[], Services], peers: Peers | None = None) -> None:
        self.services = services
        self.peers = peers

    def families(self) -> list[Family]:
        own = (family for reporter in self.services().reporters() for family in reporter.families())
        return list(own) if self.peers is None else merge(own, self.peers())

    def collect(self) -> Iterator[Metric]:
        for family in self.families():
            yield _metric(family)


def registry_for(collector: GatewayCollector) -> CollectorRegistry:
    """A registry of the gateway's own (not the process-global one, so tests can run many apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
