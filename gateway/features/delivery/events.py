"""Delivery events (docs/configuration.md): with ``[delivery] publish``, each delivery that ends ``delivered``
or ``dead`` is published to the bus as its status JSON (what ``GET /_gateway/deliveries/ID`` shows),
so services subscribe instead of polling.

The record is final in the store before its event goes out, so a subscriber that looks the delivery
up on the event sees the same state. A publish the bus did not acknowledge is tried again in the
background with backoff, ``EVENT_ATTEMPTS`` times; ``{id}:{state}`` is its ``Nats-Msg-Id``, so a
retried publish whose first ack was only lost is dropped by JetStream. What is still unsent at
shutdown gets the drain's remaining time, then is logged as ``delivery_event_failed``: the delivery
itself is never affected, and its state stays readable at ``/_gateway/deliveries/ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson

from ...bus.base import BusUnavailable, Message
from ...config import Config
from ...services import Services
from .queue import record_json
from .store import DeliveryRecord

# About half a minute of tries: a bus restarting or failing over is waited out, a longer outage is logged.
EVENT_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
EVENT_ATTEMPTS = len(EVENT_BACKOFF_SECONDS) + 1


class DeliveryEvents:
    def __init__(self, services: Services, config: Callable[[], Config]) -> None:
        self.services = services
        self._config = config
        self._tasks: set[asyncio.Task[None]] = set()

    def announce(self, record: DeliveryRecord) -> None:
        """Publish ``record`` (final: delivered or dead) if the config asks for it; returns at once."""
        publish = self._config().delivery.publish
        if publish is None:
            return
        values = {"state": record.state, "vendor": record.request.vendor}
        message = Message(
            subject=publish.subject.render(values),
            body=orjson.dumps(record_json(record)),
            headers={"Gateway-Delivery-Id": record.id, "Gateway-Delivery-State": record.state},
            msg_id=f"{record.id}:{record.state}",
        )
        task = asyncio.get_running_loop().create_task(self._publish(record, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, record: DeliveryRecord, message: Message) -> None:
        counts = self.services.deliveries.events
        error = ""
        try:
            for attempt in range(EVENT_ATTEMPTS):
                publish = self._config().delivery.publish
                if publish is None:
                    return  # a reload turned the events off
                try:
                    await self.services.bus.publish(publish, message)
                except BusUnavailable as exc:
                    error = str(exc)
                    if attempt < len(EVENT_BACKOFF_SECONDS):
                        await asyncio.sleep(EVENT_BACKOFF_SECONDS[attempt])
                    continue
                counts[(record.state, "published")] += 1
                return
        except asyncio.CancelledError:
            counts[(record.state, "failed")] += 1
            self._failed(record, message, error or "the gateway stopped before the bus acknowledged")
            raise
        counts[(record.state, "failed")] += 1
        self._failed(record, message, error)

    def _failed(self, record: DeliveryRecord, message: Message, error: str) -> None:
        self.services.logger.event(
            "delivery_event_failed",
            level="error",
            delivery_id=record.id,
            state=record.state,
            subject=message.subject,
            error=error,
        )

    async def stop(self, drain_seconds: float) -> None:
        """Let unsent events try for ``drain_seconds``, then give up on them (logged)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=drain_seconds)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
