"""The monitor: one background task, started and stopped with the Gateway, that keeps the history and
evaluates the alerts.

Every ``SAMPLE_SECONDS`` it reads each configured vendor's figures from what the features count
(``readings``) into ``Services.history``, and every ``[alerts] evaluate_seconds`` it evaluates the rules
(``Services.alerts``), whose notices go to the webhook notifier. The time comes from ``clock`` (the
rate limiters' ``Clock``: ``now()`` and ``timeout()``), so a test moves it instead of sleeping.

One of several workers (``gateway.http.worker``) reads ``families`` instead: the metric families
``/_gateway/metrics`` answers with, its own live ones merged with the other workers' latest snapshots
(``readings_of``). So its history, and the dashboard, ``/_gateway/status`` and the alerts read from it,
count every worker's requests, those of other workers as of their last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..config import Config
from ..features.ratelimit.policy import MONOTONIC, Clock
from ..services import Services
from .history import Reading
from .metrics import DURATION_BUCKETS, Family, Histogram
from .notifier import WebhookNotifier

SAMPLE_SECONDS = 1.0


def _readings(
    vendors: Iterable[str],
    requests: Iterable[tuple[str, int, int]],
    retries: Iterable[tuple[str, int]],
    rejected: Mapping[str, int],
    latency: Mapping[str, Histogram],
    queued: Mapping[str, int],
    circuits: Mapping[str, int],
    dead: Mapping[str, int],
) -> dict[str, Reading]:
    """The Reading of each of ``vendors``: ``requests`` (vendor, status, count) and ``retries`` (vendor,
    count) one per series, the others vendor -> figure (0 for a vendor they do not have)."""
    totals = {vendor: [0, 0, 0] for vendor in vendors}
    for vendor, status, count in requests:
        figures = totals.get(vendor)
        if figures is not None:
            figures[0] += count
            if status >= 500:
                figures[2] += count
            elif status >= 400:
                figures[1] += count
    retried = dict.fromkeys(totals, 0)
    for vendor, count in retries:
        if vendor in retried:
            retried[vendor] += count
    empty = [0] * (len(DURATION_BUCKETS) + 1)
    out: dict[str, Reading] = {}
    for vendor, (count, client_errors, server_errors) in totals.items():
        histogram = latency.get(vendor)
        out[vendor] = Reading(
            requests=count,
            client_errors=client_errors,
            server_errors=server_errors,
            rejected=rejected.get(vendor, 0),
            retries=retried[vendor],
            latency=list(histogram.counts) if histogram is not None else empty,
            queued=queued.get(vendor, 0),
            circuit_open=circuits.get(vendor, 0),
            dead_letters=dead.get(vendor, 0),
        )
    return out


def readings(services: Services, vendors: Iterable[str]) -> dict[str, Reading]:
    """Each vendor's cumulative counters and current gauges, as this process's features keep them."""
    metrics = services.metrics
    return _readings(
        vendors,
        ((vendor, status, count) for (vendor, _route, _method, status), count in metrics.requests.items()),
        ((vendor, count) for (vendor, _reason), count in services.retries.sent.items()),
        services.ratelimits.rejected,
        metrics.duration,
        services.ratelimits.queued_per_vendor(),
        services.circuits.open_state(),
        services.deliveries.dead,
    )


def readings_of(families: Iterable[Family], vendors: Iterable[str]) -> dict[str, Reading]:
    """``readings`` from the metric families the features report, as ``collector.merge`` gives them
    (label values as tuples of strings): with several workers, every worker's figures together."""
    samples: dict[str, Mapping[tuple[str, ...], Any]] = {family.name: family.samples for family in families}

    def per_vendor(name: str) -> dict[str, int]:
        return {key[0]: int(value) for key, value in samples.get(name, {}).items()}

    return _readings(
        vendors,
        (
            (vendor, int(status), int(count))
            for (vendor, _route, _method, status), count in samples.get("gateway_requests", {}).items()
        ),
        ((vendor, int(count)) for (vendor, _reason), count in samples.get("gateway_retries", {}).items()),
        per_vendor("gateway_ratelimit_rejected"),
        {key[0]: histogram for key, histogram in samples.get("gateway_request_duration_seconds", {}).items()},
        per_vendor("gateway_ratelimit_queue_depth"),
        per_vendor("gateway_circuit_open"),
        per_vendor("gateway_dlq_depth"),
    )


class Monitor:
    def __init__(self, services: Services, config: Callable[[], Config], *, clock: Clock = MONOTONIC) -> None:
        self.services = services
        self.config = config  # the config in force (a reload's rules apply from the next tick)
        self.clock = clock  # read at every tick, so a test may swap it before starting
        # One of several workers: every worker's figures, read at every tick instead of ``services``'.
        self.families: Callable[[], Iterable[Family]] | None = None
        self.notifier = WebhookNotifier(services.pool, lambda: config().alerts, services.logger)
        services.alerts.notify = self.notifier.post
        current = config()
        # Every alert's series exists (at 0) from the start, before the first evaluation.
        services.alerts.configure(current.alerts.rules, frozenset(current.vendors))
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_evaluation = 0.0
        self.ticks = 0
        self.busy_seconds = 0.0  # CPU time of every tick together (perf_counter), for the report
        self.slowest_tick_seconds = 0.0

    def tick(self) -> None:
        """Read the figures into the history and, when it is time, evaluate the alerts."""
        started = time.perf_counter()
        services, config = self.services, self.config()
        now = self.clock.now()
        vendors = frozenset(config.vendors)
        services.alerts.configure(config.alerts.rules, vendors)
        families = self.families
        figures = readings(services, vendors) if families is None else readings_of(families(), vendors)
        services.history.record(now, figures)
        if now >= self._next_evaluation:
            services.alerts.evaluate(services.history, now)
            self._next_evaluation = now + config.alerts.evaluate_seconds
        self.ticks += 1
        spent = time.perf_counter() - started
        self.busy_seconds += spent
        self.slowest_tick_seconds = max(self.slowest_tick_seconds, spent)

    def start(self) -> None:
        """The first reading now (what happens from here on is counted), then one every second."""
        if self._task is not None:
            return
        self.tick()
        self.notifier.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def reloaded(self) -> None:
        """A new config is in force: read the figures now, so that a vendor it added starts its history
        before its first request (at the next tick, the requests before it would be in its baseline)."""
        if self._task is not None:
            self._tick_logged()

    def _tick_logged(self) -> None:
        try:
            self.tick()
        except Exception as exc:  # the monitor must outlive any one bad reading
            self.services.logger.exception("monitor_failed", exc)

    async def _run(self) -> None:
        due = self.clock.now() + SAMPLE_SECONDS
        while True:
            clock = self.clock
            try:
                async with clock.timeout(max(0.0, due - clock.now())):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            due += SAMPLE_SECONDS
            if due <= clock.now():  # behind by a tick or more (a stalled loop): on from now, no burst
                due = clock.now() + SAMPLE_SECONDS
            self._tick_logged()

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.notifier.stop()
