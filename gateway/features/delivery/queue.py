"""Async delivery as the rest of the gateway sees it (docs/http.md): accept, look up, count.

``Deliveries`` (on ``Services``) stores an accepted request in the store's durable queue
(``store.deliveries``) and wakes this process's workers (``gateway.features.delivery.workers``), which
deliver it with the vendor's retry policy. ``GET /_gateway/deliveries/ID`` shows a delivery
(``http.app.delivery``), and ``gateway dlq`` works on the dead letters (``gateway.features.delivery.dlq``).
``record_json`` is the one rendering of a record, for both.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ...observability.logging import Logger
from ...observability.metrics import Family
from ...store import Store
from .store import DeliveryRecord, DeliveryRequest

LOCATION_PREFIX = "/_gateway/deliveries/"
_ID = re.compile(r"^[0-9a-f]{27}$")


def new_delivery_id() -> str:
    """Time-ordered (milliseconds, then 64 random bits): listings sort by when they were accepted."""
    return f"{int(time.time() * 1000):011x}{os.urandom(8).hex()}"


def valid_id(delivery_id: str) -> bool:
    return bool(_ID.match(delivery_id))


class Deliveries:
    """Accepts deliveries and keeps the figures for metrics and the dashboard."""

    def __init__(self, store: Store, logger: Logger) -> None:
        self.store = store
        self.logger = logger
        self.wake = asyncio.Event()  # set when this process queued something: its workers look at once
        self.accepted: Counter[str] = Counter()  # vendor -> deliveries accepted with 202
        self.delivered: Counter[str] = Counter()
        self.dead_lettered: Counter[str] = Counter()
        self.retried: Counter[str] = Counter()  # deliveries put back to wait for another attempt
        # As last read from the store by the workers (every few seconds): deliveries queued or in
        # progress, and dead letters per vendor (gateway_dlq_depth{vendor}).
        self.pending = 0
        self.dead: dict[str, int] = {}
        self.vendors: frozenset[str] = frozenset()  # the configured vendors: each has a DLQ depth, 0 or more
        # (state, outcome) -> delivery events ([delivery] publish): published, or failed after retries.
        self.events: Counter[tuple[str, str]] = Counter()

    async def enqueue(self, delivery_id: str, request: DeliveryRequest) -> None:
        """Store the request durably (``new_delivery_id()``); raises StoreUnavailable."""
        await self.store.deliveries.delivery_enqueue(delivery_id, request)
        self.accepted[request.vendor] += 1
        self.pending += 1
        self.wake.set()

    async def refresh(self) -> None:
        self.pending, self.dead = await self.store.deliveries.delivery_depth()

    def families(self) -> Iterator[Family]:
        yield Family(
            "gateway_dlq_depth",
            "Dead letters per vendor (read from the store every few seconds).",
            "gauge",
            ("vendor",),
            {vendor: self.dead.get(vendor, 0) for vendor in self.vendors | set(self.dead)},
        )
        outcomes = {
            (vendor, outcome): count
            for outcome, counts in (
                ("accepted", self.accepted),
                ("delivered", self.delivered),
                ("retried", self.retried),
                ("dead_lettered", self.dead_lettered),
            )
            for vendor, count in counts.items()
        }
        yield Family(
            "gateway_deliveries",
            "Async deliveries by this process: accepted (202), delivered, retried, dead_lettered.",
            "counter",
            ("vendor", "outcome"),
            outcomes,
        )
        yield Family(
            "gateway_delivery_events",
            "Deliveries that ended (state delivered or dead) published to the bus, or failed to be.",
            "counter",
            ("state", "outcome"),
            self.events,
        )
        yield Family(
            "gateway_delivery_queue_depth",
            "Deliveries queued or in progress, for every gateway on the store.",
            "gauge",
            (),
            {(): self.pending},
        )


def _when(epoch: float | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _body(body: bytes) -> dict[str, Any]:
    try:
        return {"body": body.decode("utf-8"), "body_base64": False}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "body_base64": True}


def record_json(record: DeliveryRecord, *, request_body: bool = False) -> dict[str, Any]:
    """A delivery as JSON: its state and, once the vendor answered, the answer."""
    req = record.request
    out: dict[str, Any] = {
        "id": record.id,
        "state": record.state,
        "vendor": req.vendor,
        "method": req.method,
        "path": req.path + ("?" + req.query if req.query else ""),
        "attempts": record.attempts,
        "last_error": record.last_error,
        "created_at": _when(record.created),
        "updated_at": _when(record.updated),
        "next_attempt_at": _when(record.next_attempt),
        "replays": record.replays,
        "request_id": req.request_id,
        "idempotency_key": req.idempotency_key,
        # The vendor header the key is sent under; null: the vendor's config named no forward_header
        # (the caller's key, if any, passes among the request's headers, and a POST is not repeated).
        "idempotency_forward_header": req.forward_header,
        "response": None,
    }
    if request_body:
        out["request"] = {"headers": [list(pair) for pair in req.headers], **_body(req.body)}
    if record.response is not None:
        answer = record.response
        headers: dict[str, str] = {}
        for name, value in answer.headers:
            headers[str(name)] = f"{headers[name]}, {value}" if name in headers else value
        out["response"] = {"status": answer.status, "headers": headers, **_body(answer.body)}
    return out
