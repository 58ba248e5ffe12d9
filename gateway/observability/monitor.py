"""The monitor: one background task, started and stopped with the Gateway, that keeps the history and
evaluates the alerts.

Every ``SAMPLE_SECONDS`` it reads each configured vendor's figures from what the features count
(``readings``) into ``Services.history``, and every ``[alerts] evaluate_seconds`` it evaluates the rules
(``Services.alerts``), whose notices go to the webhook notifier. The time comes from ``clock`` (the
rate limiters' ``Clock``: ``now()`` and ``timeout()``), so a test moves it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ..config import Config
from ..features.ratelimit.policy import MONOTONIC, Clock
from ..services import Services
from .history import Reading
from .metrics import DURATION_BUCKETS
from .notifier import WebhookNotifier

SAMPLE_SECONDS = 1.0


def readings(services: Services, vendors: frozenset[str] | set[str]) -> dict[str, Reading]:
    """Each vendor's cumulative counters and current gauges, as the features keep them."""
    totals = {vendor: [0, 0, 0] for vendor in vendors}
    for (vendor, _route, _method, status), count in services.metrics.requests.items():
        figures = totals.get(vendor)
        if figures is not None:
            figures[0] += count
            if status >= 500:
                figures[2] += count
            elif status >= 400:
                figures[1] += count
    retries = dict.fromkeys(vendors, 0)
    for (vendor, _reason), count in services.retries.sent.items():
        if vendor in retries:
            retries[vendor] += count
    rejected = services.ratelimits.rejected
    circuits = services.circuits.open_state()
    dead = services.deliveries.dead
    durations = services.metrics.duration
    empty = [0] * (len(DURATION_BUCKETS) + 1)
    out: dict[str, Reading] = {}
    for vendor, (requests, client_errors, server_errors) in totals.items():
        histogram = durations.get(vendor)
        out[vendor] = Reading(
            requests=requests,
            client_errors=client_errors,
            server_errors=server_errors,
            rejected=rejected[vendor],
            retries=retries[vendor],
            latency=list(histogram.counts) if histogram is not None else empty,
            queued=services.ratelimits.queued_for(vendor),
            circuit_open=circuits.get(vendor, 0),
            dead_letters=dead.get(vendor, 0),
        )
    return out


class Monitor:
    def __init__(self, services: Services, config: Callable[[], Config], *, clock: Clock = MONOTONIC) -> None:
        self.services = services
        self.config = config  # the config in force (a reload's rules apply from the next tick)
        self.clock = clock  # read at every tick, so a test may swap it before starting
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
        services.history.record(now, readings(services, vendors))
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
            try:
                self.tick()
            except Exception as exc:  # the monitor must outlive any one bad reading
                self.services.logger.exception("monitor_failed", exc)

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.notifier.stop()
