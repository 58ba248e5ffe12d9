"""The buses one gateway process publishes to, behind one ``publish``: NATS JetStream when ``[bus]
nats_url`` is set, and the Redis store's streams when the store is Redis. Kept on ``Services`` for
the process's life: ``[bus]`` changes need a restart; a reload may name new subjects, which the
JetStream stream then captures before the next publish.

Every publish is bounded by ``[bus] publish_timeout_seconds`` and either returns acknowledged or
raises ``BusUnavailable``; its latency (publish to acknowledgement) and failures are counted per bus.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from ..config import Config
from ..config.model import BusSettings, Publish
from ..observability.logging import Logger
from ..observability.metrics import DURATION_BUCKETS, Family, Histogram
from ..store import Store, StoreUnavailable
from .base import BusUnavailable, Message
from .jetstream import JetStreamBus


def nats_filters(config: Config) -> list[str]:
    """The subjects the JetStream stream must capture for ``config``'s publishes."""
    publishes = [hook.publish for hook in config.webhooks.values()]
    if config.delivery.publish is not None:
        publishes.append(config.delivery.publish)
    return sorted({p.subject.subject_filter() for p in publishes if p.bus == "nats"})


class Buses:
    def __init__(self, store: Store, logger: Logger) -> None:
        self.store = store
        self.logger = logger
        self.settings = BusSettings()
        self.nats: JetStreamBus | None = None
        self.latency: dict[str, Histogram] = {}
        self.failures: Counter[str] = Counter()

    def start(self, config: Config) -> None:
        """Begin connecting to the buses ``config`` names (in the background: a bus that is down
        makes publishes fail, not the start)."""
        self.settings = config.bus
        if config.bus.nats_url is not None:
            self.nats = JetStreamBus(config.bus, self.logger)
            self.nats.start(nats_filters(config))

    def update(self, config: Config) -> None:
        """A reloaded config is in force: the stream follows its subjects."""
        if self.nats is not None:
            self.nats.subjects(nats_filters(config))

    async def publish(self, publish: Publish, message: Message) -> None:
        """Return once ``publish.bus`` acknowledged ``message``; raise ``BusUnavailable`` otherwise."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.publish_timeout_seconds):
                await self._publish(publish, message)
        except TimeoutError:
            self.failures[publish.bus] += 1
            seconds = self.settings.publish_timeout_seconds
            raise BusUnavailable(f"the {publish.bus} bus did not acknowledge within {seconds:g} s") from None
        except BusUnavailable:
            self.failures[publish.bus] += 1
            raise
        if (histogram := self.latency.get(publish.bus)) is None:
            histogram = self.latency[publish.bus] = Histogram(DURATION_BUCKETS)
        histogram.observe(time.perf_counter() - started)

    async def _publish(self, publish: Publish, message: Message) -> None:
        if publish.bus == "nats":
            if self.nats is None:
                raise BusUnavailable("no [bus] nats_url is configured")
            await self.nats.publish(message)
            return
        streams = self.store.streams
        if streams is None:
            raise BusUnavailable("the store is not Redis, so it has no streams")
        try:
            await streams.stream_add(message, max_length=publish.max_length)
        except StoreUnavailable as exc:
            raise BusUnavailable(str(exc)) from None

    def state(self) -> dict[str, Any]:
        """For /_gateway/ready: each configured bus and whether it is connected."""
        found: dict[str, Any] = {}
        if self.nats is not None:
            found["nats"] = "connected" if self.nats.connected else "disconnected"
        return found

    async def close(self) -> None:
        if self.nats is not None:
            await self.nats.close()

    def families(self) -> Iterator[Family]:
        if self.nats is not None:
            yield Family(
                "gateway_bus_connected",
                "Whether this process is connected to the bus (1) or not (0).",
                "gauge",
                ("bus",),
                {"nats": 1 if self.nats.connected else 0},
            )
        yield Family(
            "gateway_bus_publish_duration_seconds",
            "From publishing an event to the bus's acknowledgement (JetStream PubAck, Redis XADD).",
            "histogram",
            ("bus",),
            self.latency,
        )
        yield Family(
            "gateway_bus_publish_failures",
            "Publishes the bus did not acknowledge (down, slow or refused).",
            "counter",
            ("bus",),
            self.failures,
        )
