"""The durable delivery queue and dead-letter queue (docs/operations.md): protocol, records, memory backend.

A delivery is a stored request (``DeliveryRequest``: what the vendor gets, minus the credentials the
forwarder injects at send time) plus its progress (``DeliveryRecord``). Its life:

    queued ──take──▶ delivering ──done──▶ delivered   (kept ``keep_seconds``, then forgotten)
       ▲                 │  └──────dead──▶ dead        (kept until purged; ``replay`` queues it again)
       └──── retry ──────┘  (after a delay; or ``release`` at shutdown, at once)

``delivery_take`` hands a worker the deliveries that are ready (new ones, retries whose delay is over)
and, with ``reclaim``, the ones a worker took but has not finished or touched for ``claim_after_seconds``
(its process died). A worker ``delivery_touch``-es what it holds so a slow vendor does not look like a
dead worker. Finishing (``done``/``retry``/``dead``/``release``) takes the ``Lease`` it was handed; a
delivery that is already final (another worker finished it, or it was purged) is only let go, so a
duplicate never turns a delivered record back into a queued one.

Delivery is at least once: a worker that dies after the vendor acted but before ``done`` leaves the
delivery to be sent again, which the idempotency key sent under the vendor's ``forward_header`` makes
harmless at the vendor.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

DeliveryState = Literal["queued", "delivering", "delivered", "dead"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRequest:
    vendor: str
    method: str
    path: str  # raw vendor path, as the caller sent it
    query: str
    segments: tuple[str, ...]  # decoded, to find the route again when it is delivered
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client: str | None
    request_id: str
    # The caller's Idempotency-Key (or ``gw-<id>``, made for a vendor with a forward_header), as accepted.
    idempotency_key: str | None = None
    # The vendor header the key is sent under (the vendor's ``idempotency.forward_header``), which makes a
    # POST or PATCH safe to repeat. None: the vendor's config named none; the caller's field, if any,
    # is in ``headers`` as an ordinary header, and the request is not repeated.
    forward_header: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRecord:
    id: str
    request: DeliveryRequest
    state: DeliveryState
    attempts: int = 0  # vendor calls made so far (since the last replay)
    created: float = 0.0  # epoch seconds
    updated: float = 0.0
    last_error: str | None = None
    next_attempt: float | None = None  # epoch seconds, while queued after a failure
    response: DeliveryResponse | None = None  # the vendor's answer, once delivered (or a final refusal)
    replays: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """A delivery handed to one worker; ``token`` identifies that hand-over (a stream entry in Redis)."""

    id: str
    token: str


class DeliveryOps(Protocol):
    async def delivery_enqueue(self, delivery_id: str, request: DeliveryRequest) -> None: ...

    async def delivery_get(self, delivery_id: str) -> DeliveryRecord | None: ...

    async def delivery_take(
        self, consumer: str, count: int, *, claim_after_seconds: float, reclaim: bool
    ) -> list[Lease]:
        """Up to ``count`` deliveries for ``consumer`` to work on."""
        ...

    async def delivery_start(self, lease: Lease) -> DeliveryRecord | None:
        """Mark it delivering and return it; None (and the lease let go) when it is final or gone."""
        ...

    async def delivery_touch(self, consumer: str, leases: list[Lease]) -> None:
        """Still working on these: do not let another worker reclaim them."""
        ...

    async def delivery_done(
        self, lease: Lease, *, attempts: int, response: DeliveryResponse, keep_seconds: float
    ) -> None: ...

    async def delivery_retry(
        self, lease: Lease, *, attempts: int, error: str, delay_seconds: float
    ) -> None: ...

    async def delivery_dead(
        self, lease: Lease, *, attempts: int, error: str, response: DeliveryResponse | None
    ) -> None: ...

    async def delivery_release(self, lease: Lease) -> None:
        """Give an unfinished delivery back at once (shutdown), for any worker to take."""
        ...

    async def delivery_depth(self) -> tuple[int, dict[str, int]]:
        """(deliveries queued or in progress, dead letters per vendor)."""
        ...

    async def dead_letters(self, limit: int) -> list[DeliveryRecord]:
        """The oldest ``limit`` dead letters, oldest first."""
        ...

    async def dead_replay(self, delivery_id: str) -> bool:
        """Queue a dead letter again with a fresh attempt count; False if it is not a dead letter."""
        ...

    async def dead_purge(self, delivery_id: str) -> bool:
        """Forget a dead letter; False if it is not one."""
        ...


@dataclass(slots=True)
class _Queue:
    records: dict[str, DeliveryRecord] = field(default_factory=dict)
    ready: deque[str] = field(default_factory=deque)
    delayed: list[tuple[float, str]] = field(default_factory=list)  # heap of (due, id), monotonic
    held: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # token -> (id, consumer, since)
    dead: dict[str, float] = field(default_factory=dict)  # id -> when, in order
    dead_by_vendor: Counter[str] = field(default_factory=Counter)
    expires: list[tuple[float, str]] = field(default_factory=list)  # delivered records to forget
    tokens: int = 0


class MemoryDeliveries:
    """``DeliveryOps`` in this process: the queue lives and dies with the gateway process."""

    def __init__(self) -> None:
        self._deliveries = _Queue()

    async def delivery_enqueue(self, delivery_id: str, request: DeliveryRequest) -> None:
        q = self._deliveries
        now = time.time()
        q.records[delivery_id] = DeliveryRecord(
            id=delivery_id, request=request, state="queued", created=now, updated=now
        )
        q.ready.append(delivery_id)

    async def delivery_get(self, delivery_id: str) -> DeliveryRecord | None:
        q = self._deliveries
        self._forget_expired(q)
        return q.records.get(delivery_id)

    def _forget_expired(self, q: _Queue) -> None:
        now = time.monotonic()
        while q.expires and q.expires[0][0] <= now:
            _, delivery_id = heapq.heappop(q.expires)
            record = q.records.get(delivery_id)
            if record is not None and record.state == "delivered":
                del q.records[delivery_id]

    async def delivery_take(
        self, consumer: str, count: int, *, claim_after_seconds: float, reclaim: bool
    ) -> list[Lease]:
        q = self._deliveries
        now = time.monotonic()
        while q.delayed and q.delayed[0][0] <= now:
            _, delivery_id = heapq.heappop(q.delayed)
            q.ready.append(delivery_id)
        out: list[Lease] = []
        if reclaim:
            for token, (delivery_id, _, since) in list(q.held.items()):
                if len(out) >= count:
                    break
                if now - since >= claim_after_seconds:
                    q.held[token] = (delivery_id, consumer, now)
                    out.append(Lease(delivery_id, token))
        while q.ready and len(out) < count:
            delivery_id = q.ready.popleft()
            q.tokens += 1
            token = str(q.tokens)
            q.held[token] = (delivery_id, consumer, now)
            out.append(Lease(delivery_id, token))
        return out

    async def delivery_start(self, lease: Lease) -> DeliveryRecord | None:
        q = self._deliveries
        record = q.records.get(lease.id)
        if record is None or record.state in ("delivered", "dead"):
            q.held.pop(lease.token, None)
            return None
        record = q.records[lease.id] = replace(record, state="delivering", updated=time.time())
        return record

    async def delivery_touch(self, consumer: str, leases: list[Lease]) -> None:
        q = self._deliveries
        now = time.monotonic()
        for lease in leases:
            held = q.held.get(lease.token)
            if held is not None and held[1] == consumer:
                q.held[lease.token] = (held[0], consumer, now)

    def _finish(self, q: _Queue, lease: Lease) -> DeliveryRecord | None:
        """Let the lease go; the record if it may still change (not final, not purged)."""
        q.held.pop(lease.token, None)
        record = q.records.get(lease.id)
        if record is None or record.state in ("delivered", "dead"):
            return None
        return record

    async def delivery_done(
        self, lease: Lease, *, attempts: int, response: DeliveryResponse, keep_seconds: float
    ) -> None:
        q = self._deliveries
        record = self._finish(q, lease)
        if record is None:
            return
        q.records[lease.id] = replace(
            record,
            state="delivered",
            attempts=attempts,
            response=response,
            next_attempt=None,
            updated=time.time(),
        )
        heapq.heappush(q.expires, (time.monotonic() + keep_seconds, lease.id))

    async def delivery_retry(self, lease: Lease, *, attempts: int, error: str, delay_seconds: float) -> None:
        q = self._deliveries
        record = self._finish(q, lease)
        if record is None:
            return
        now = time.time()
        q.records[lease.id] = replace(
            record,
            state="queued",
            attempts=attempts,
            last_error=error,
            next_attempt=now + delay_seconds,
            updated=now,
        )
        heapq.heappush(q.delayed, (time.monotonic() + delay_seconds, lease.id))

    async def delivery_dead(
        self, lease: Lease, *, attempts: int, error: str, response: DeliveryResponse | None
    ) -> None:
        q = self._deliveries
        record = self._finish(q, lease)
        if record is None:
            return
        q.records[lease.id] = replace(
            record,
            state="dead",
            attempts=attempts,
            last_error=error,
            response=response,
            next_attempt=None,
            updated=time.time(),
        )
        q.dead[lease.id] = time.time()
        q.dead_by_vendor[record.request.vendor] += 1

    async def delivery_release(self, lease: Lease) -> None:
        q = self._deliveries
        record = self._finish(q, lease)
        if record is None:
            return
        q.records[lease.id] = replace(record, state="queued", updated=time.time())
        q.ready.appendleft(lease.id)

    async def delivery_depth(self) -> tuple[int, dict[str, int]]:
        q = self._deliveries
        pending = sum(1 for r in q.records.values() if r.state in ("queued", "delivering"))
        return pending, {vendor: n for vendor, n in q.dead_by_vendor.items() if n}

    async def dead_letters(self, limit: int) -> list[DeliveryRecord]:
        q = self._deliveries
        return [q.records[i] for i in list(q.dead)[:limit] if i in q.records]

    async def dead_replay(self, delivery_id: str) -> bool:
        q = self._deliveries
        record = q.records.get(delivery_id)
        if record is None or record.state != "dead":
            return False
        del q.dead[delivery_id]
        q.dead_by_vendor[record.request.vendor] -= 1
        q.records[delivery_id] = replace(
            record, state="queued", attempts=0, replays=record.replays + 1, updated=time.time()
        )
        q.ready.append(delivery_id)
        return True

    async def dead_purge(self, delivery_id: str) -> bool:
        q = self._deliveries
        record = q.records.get(delivery_id)
        if record is None or record.state != "dead":
            return False
        del q.dead[delivery_id]
        q.dead_by_vendor[record.request.vendor] -= 1
        del q.records[delivery_id]
        return True
