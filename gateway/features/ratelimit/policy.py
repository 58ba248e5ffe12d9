"""Rate limits, concurrency limits and vendor pauses (docs/configuration.md): the limiter objects.

A ``Limiter`` guards one limit: a vendor's (``rate_limit`` and ``concurrency``), a route's, or a client's
quota. They are app-wide, built from config by the ``RateLimits`` registry on ``Services``, shared by every
route of a vendor, and reconfigured in place on reload, so a reload neither resets a schedule nor drops
the requests queued on it. The stage that uses them is ``gateway.features.ratelimit.stage``.

How a request is admitted:

- Pace: GCRA (``store.gcra``), one request every ``per_seconds / requests``, ``burst`` at once after
  a quiet spell. ``scope = "local"`` keeps the schedule here; ``"global"`` keeps it in the store, where
  the Redis script reads the clock from Redis ``TIME``, so every replica shares one schedule.
- Queue: a request that cannot go at once waits, at most ``max_wait_seconds``, in a queue of at most
  ``max_queue``. Waiters are served round-robin between callers (``Exchange.client``) and first come first
  served within a caller, so one caller's flood does not sit in front of another's single request; a
  full queue drops the newest waiter of the caller with the most queued when that is not the newcomer
  (longest-queue drop), else refuses the newcomer. Without ``[clients]`` every caller is anonymous: one
  FIFO queue. Refusals are ``RateLimited`` (429) with ``Retry-After``, ``RateLimit-Policy`` and
  ``RateLimit``.
- Concurrency: at most ``concurrency`` admitted and not yet released (per process).
- Pause: a vendor's 429 or 503 with ``Retry-After`` holds the queue until then, for at most the vendor's
  ``rate_limit.max_pause_seconds``; with a global limit the pause goes into the shared schedule too, so
  every replica holds. After a pause requests resume at the pace, without the burst a long quiet spell
  would otherwise save up.

One task per limiter (the dispatcher) hands out turns while anyone waits; with a local limit, a request
that finds no queue and a free turn goes without any task switch (a global one always asks the store,
through the dispatcher: one store round trip per turn, per limiter and process). Invariants: only the
dispatcher admits while the queue is non-empty; a waiter is in exactly one per-caller deque until it is
admitted, refused or gives up, and ``_depth`` counts them.

Why GCRA here rather than aiolimiter's leaky bucket: aiolimiter's ``acquire`` is neither first come
first served nor bounded in time, so a scheduler would sit on top of it anyway, and the global scope
needs GCRA in Redis regardless. One rule for both scopes (the same function the memory store runs)
means local, global-on-memory and global-on-Redis limits pace, burst, pause and reload identically.

Time: every limiter reads it from ``RateLimits.clock`` (``MONOTONIC``: ``time.monotonic`` and
``asyncio.timeout``), waits included. Tests give the registry a clock they move by hand, so a timing
test asserts the schedule itself rather than how busy the machine happened to be.

If the store is down, a global limit falls back to this process's own schedule for
``store.fallback.FALLBACK_SECONDS`` at a time (logged as ``ratelimit_store_unavailable``, counted in
``RateLimits.store_fallbacks``): the vendor stays protected per process, at the cost of N replicas
being allowed N times the limit until the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from ...config import (
    DEFAULT_CONCURRENCY_MAX_QUEUE,
    DEFAULT_MAX_PAUSE_SECONDS,
    DEFAULT_MAX_WAIT_SECONDS,
    Client,
    RateLimit,
    Route,
    Vendor,
)
from ...errors import TooManyRequests
from ...observability.logging import Logger
from ...observability.metrics import Family, Histogram
from ...store import StoreUnavailable
from ...store.fallback import StoreFallback
from .store import RateBucket, RateLimitOps, gcra, gcra_pause

# Retry-After delay-seconds, or a date, further off than this read as this (RFC 9111 section 1.2.2 does
# the same for delta-seconds): far beyond any pause, and no number of digits can overflow a float. How
# long a vendor's pause may actually last is its ``rate_limit.max_pause_seconds``.
MAX_RETRY_AFTER_SECONDS = 2**31
# gateway_ratelimit_wait_seconds buckets (upper bounds; the last count is +Inf).
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Clock(Protocol):
    """Where limiters read the time (seconds, monotonic) and how they wait on it."""

    def now(self) -> float: ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """Like ``asyncio.timeout``: TimeoutError when ``seconds`` of this clock pass first (None: never)."""
        ...


class MonotonicClock:
    """The production clock: ``time.monotonic``, and ``asyncio.timeout`` (the loop's monotonic time)."""

    now = staticmethod(time.monotonic)  # the builtin itself: no Python frame per reading

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


MONOTONIC = MonotonicClock()


class RateLimited(TooManyRequests):
    """429 made by the gateway: a limit could not admit the request within its queue and wait."""

    def __init__(self, detail: str, *, headers: Mapping[str, str], reason: str, policy: str) -> None:
        super().__init__(detail, headers=headers, extra={"policy": policy})
        self.reason = reason  # "queue_full" | "timeout" | "paused"
        self.policy = policy


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSettings:
    """What one Limiter enforces; compared on reload to tell whether anything changed."""

    policy: str  # the RateLimit-Policy name: "stripe", "stripe:POST /v1/charges", "client:billing"
    rate: RateLimit | None = None
    concurrency: int | None = None
    bucket: RateBucket | None = None  # the schedule's identity in the store (with ``rate``)

    @property
    def max_wait_seconds(self) -> float:
        return self.rate.max_wait_seconds if self.rate is not None else DEFAULT_MAX_WAIT_SECONDS

    @property
    def max_pause_seconds(self) -> float:
        """The longest a vendor's Retry-After holds this queue (a vendor's ``rate_limit``, or the default)."""
        return self.rate.max_pause_seconds if self.rate is not None else DEFAULT_MAX_PAUSE_SECONDS

    @property
    def max_queue(self) -> int:
        # Without a rate (concurrency only, or just holding vendor pauses) nothing bounds the queue
        # but this default; waits are still bounded by max_wait_seconds.
        return self.rate.max_queue if self.rate is not None else DEFAULT_CONCURRENCY_MAX_QUEUE

    @property
    def is_global(self) -> bool:
        return self.rate is not None and self.rate.scope == "global"


def _sf_string(text: str) -> str:
    """An RFC 8941 sf-string (policy names are made of vendor, route and client names)."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_header(settings: LimitSettings, *, concurrency: bool = False) -> str:
    """``RateLimit-Policy`` (draft-ietf-httpapi-ratelimit-headers): ``"stripe";q=100;w=1``."""
    name = _sf_string(settings.policy)
    rate = settings.rate
    if concurrency or rate is None:
        return f'{name};q={settings.concurrency or 0};qu="concurrent-requests"'
    # w is whole seconds: a limit over a fractional window is stated at the same pace over whole ones.
    if float(rate.per_seconds).is_integer():
        quota, window = rate.requests, int(rate.per_seconds)
    else:
        window = max(1, round(rate.per_seconds))
        quota = max(1, round(rate.requests * window / rate.per_seconds))
    return f"{name};q={quota};w={window}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3).

    The one reader of the header (the rate-limit and retry stages, the delivery workers). Never raises:
    None when absent or unreadable, which callers treat as no Retry-After at all. delay-seconds are ASCII
    digits only (``str.isdigit`` also admits "²" and other scripts' digits); any number of them reads,
    at most ``MAX_RETRY_AFTER_SECONDS``, as does a far-off date; a date in the past is 0.
    """
    if value is None or not value.isascii():
        return None
    value = value.strip()
    if value.isdigit():  # ASCII here
        digits = value.lstrip("0") or "0"
        return float(
            MAX_RETRY_AFTER_SECONDS if len(digits) > 10 else min(int(digits), MAX_RETRY_AFTER_SECONDS)
        )
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # RFC 9110 dates are GMT; one saying "-0000" (no zone known) is not
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), float(MAX_RETRY_AFTER_SECONDS))


class Limiter:
    """Admits requests for one limit; see the module docstring for the rules."""

    def __init__(
        self, settings: LimitSettings, store: RateLimitOps, logger: Logger, registry: RateLimits
    ) -> None:
        self.settings = settings
        self._read_settings()
        self._store = store
        self._logger = logger
        self._registry = registry
        self._queues: dict[str | None, deque[asyncio.Future[bool]]] = {}
        self._depth = 0
        self._in_flight = 0
        self._tat = 0.0  # local schedule (monotonic); also the fallback for a global one
        self._paused_until = 0.0
        self._fallback = StoreFallback(
            event="ratelimit_store_unavailable",
            what="limit",
            key=("policy", settings.policy),
            counts=registry.store_fallbacks,
            logger=logger,
            now=lambda: registry.clock.now(),
        )
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Limiter({self.settings.policy!r}, depth={self._depth}, in_flight={self._in_flight})"

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def _clock(self) -> Clock:
        return self._registry.clock

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def configure(self, settings: LimitSettings) -> None:
        """Apply new limits in place (a reload): the schedule, queue and pause carry over."""
        if settings == self.settings:
            return
        old, new = self.settings.rate, settings.rate
        if old is not None and new is not None and old.interval_seconds != new.interval_seconds:
            # The schedule's backlog is a number of recent requests; at the new pace they are worth
            # a different span of time. (A global schedule's backlog in the store is left as it is:
            # the new pace applies from its next turn.)
            now = self._clock.now()
            self._tat = now + max(0.0, self._tat - now) * new.interval_seconds / old.interval_seconds
        self.settings = settings
        self._read_settings()
        self._wake.set()

    # -- admission --------------------------------------------------------------------------------

    async def acquire(self, client: str | None, deadline: float) -> bool:
        """Wait for this request's turn until ``deadline`` (monotonic); raise ``RateLimited`` if none comes.

        Returns whether a concurrency slot was taken, to be given back with ``release()``.
        """
        now = self._clock.now()
        held = self.admit_now(now)
        if held is not None:
            return held
        return await self._wait(client, deadline, now)

    def _read_settings(self) -> None:
        """What ``admit_now`` reads of the settings, looked up once per (re)configuration."""
        settings = self.settings
        rate = settings.rate
        self._concurrency = settings.concurrency
        # (interval, tolerance) of the pace, None without a rate; a global schedule is kept in the store.
        interval = rate.interval_seconds if rate is not None else 0.0
        self._pace = None if rate is None else (interval, (rate.burst - 1) * interval)
        self._global = settings.is_global

    def admit_now(self, now: float) -> bool | None:
        """The turn without waiting, if nobody queues, no pause holds and one is due: whether a
        concurrency slot was taken (as ``acquire``); None when the request has to queue. (What
        ``_slot_free``, ``_take_local`` and ``_hold`` do, in one call: every request passes here.)"""
        if self._depth or now < self._paused_until:
            return None
        concurrency = self._concurrency
        if concurrency is not None and self._in_flight >= concurrency:
            return None
        if (pace := self._pace) is not None:
            if self._global and not self._fallback.active:
                return None
            interval, tolerance = pace
            wait, tat = gcra(self._tat, now, interval, tolerance)
            if wait > 0:
                return None
            self._tat = tat
        if concurrency is None:
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        self._in_flight -= 1
        if self._depth:
            self._wake.set()

    def _slot_free(self) -> bool:
        limit = self.settings.concurrency
        return limit is None or self._in_flight < limit

    def _hold(self) -> bool:
        if self.settings.concurrency is None:
            return False
        self._in_flight += 1
        return True

    def _local(self, now: float) -> bool:
        return not self.settings.is_global or self._fallback.active

    def _take_local(self, now: float) -> bool:
        """Take a turn from this process's schedule if one is due now (always, without a rate)."""
        pace = self._pace
        if pace is None:
            return True
        if not self._local(now):
            return False
        wait, tat = gcra(self._tat, now, *pace)
        if wait > 0:
            return False
        self._tat = tat
        return True

    async def _wait(self, client: str | None, deadline: float, now: float) -> bool:
        settings = self.settings
        if self._paused_until - now > deadline - now:
            raise self._refusal("paused", now)
        if self._depth >= settings.max_queue and not self._evict_for(client, now):
            raise self._refusal("queue_full", now)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
        queue.append(waiter)
        self._depth += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch())
        try:
            async with self._clock.timeout(max(0.0, deadline - now)):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return waiter.result()  # admitted in the same instant: the turn is taken, use it
            self._forget(client, waiter)
            raise self._refusal("timeout", self._clock.now()) from None
        except asyncio.CancelledError:
            # The caller went away: give back whatever the dispatcher had just handed it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                if waiter.result():
                    self.release()
            else:
                self._forget(client, waiter)
            raise

    def _forget(self, client: str | None, waiter: asyncio.Future[bool]) -> None:
        queue = self._queues.get(client)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
            self._depth -= 1
        if not queue:
            del self._queues[client]
        waiter.cancel()
        if not self._depth:
            self._wake.set()  # let the dispatcher stop instead of sleeping for nobody

    def _evict_for(self, client: str | None, now: float) -> bool:
        """Full queue: make room by refusing the newest waiter of the caller with the most queued, if
        that caller has at least two more waiting than ``client`` would (longest-queue drop)."""
        if not self._queues:
            return False
        mine = len(self._queues.get(client, ()))
        victim_client, victim_queue = max(self._queues.items(), key=lambda item: len(item[1]))
        if len(victim_queue) <= mine + 1:
            return False
        victim = victim_queue.pop()
        self._depth -= 1
        if not victim_queue:
            del self._queues[victim_client]
        victim.set_exception(self._refusal("queue_full", now))
        return True

    def _refusal(self, reason: str, now: float) -> RateLimited:
        settings = self.settings
        rate = settings.rate
        by_concurrency = (
            settings.concurrency is not None
            and reason != "paused"
            and (rate is None or not self._slot_free())
        )
        wait = max(0.0, self._paused_until - now)
        if not by_concurrency and rate is not None:
            interval = rate.interval_seconds
            behind = self._depth * interval
            if self._local(now):
                behind += max(0.0, self._tat - (rate.burst - 1) * interval - now)
            wait = max(wait, behind, interval)
        retry = max(1, math.ceil(wait))
        if reason == "paused":
            detail = f"{settings.policy} asked the gateway to wait; its queue is paused for {retry}s"
        elif reason == "queue_full" and settings.max_queue == 0:
            detail = f"the rate limit for {settings.policy} is reached, and it queues no requests"
        elif reason == "queue_full":
            detail = f"the rate limit queue for {settings.policy} is full"
        else:
            detail = (
                f"the rate limit for {settings.policy} could not admit the request within "
                f"{settings.max_wait_seconds:g}s"
            )
        name = _sf_string(settings.policy)
        if by_concurrency or rate is not None:
            policy = policy_header(settings, concurrency=by_concurrency)
        else:
            policy = f"{name};q=0;w={retry}"  # no limit configured, only the vendor's pause: none for now
        return RateLimited(
            detail,
            headers={
                "Retry-After": str(retry),
                "RateLimit-Policy": policy,
                "RateLimit": f"{name};r=0;t={retry}",
            },
            reason=reason,
            policy=settings.policy,
        )

    # -- the dispatcher ---------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        try:
            while self._depth:
                wait = await self._turn_in()
                if wait > 0:
                    await self._sleep(wait)
                    continue
                waiter = self._next_waiter()
                if waiter is None:
                    break  # everyone left while a global turn was being taken: that turn is unused
                waiter.set_result(self._hold())
        finally:
            self._task = None

    async def _turn_in(self) -> float:
        """0.0 when a turn has been taken for the next waiter; else seconds to wait (inf: a release)."""
        now = self._clock.now()
        if now < self._paused_until:
            return self._paused_until - now
        if not self._slot_free():
            return math.inf
        settings = self.settings
        rate = settings.rate
        if rate is None:
            return 0.0
        interval = rate.interval_seconds
        if not self._local(now):
            assert settings.bucket is not None
            try:
                wait = await self._store.take(settings.bucket)
            except Exception as exc:  # see store.fallback: the vendor stays protected, per process
                self._fallback.failed(exc)
                return 0.0 if self._take_local(self._clock.now()) else interval
            if wait > 0:
                return wait
            # The store gave a turn; a request that took the last concurrency slot meanwhile (the
            # queue emptied and refilled during the await) costs this turn, never an extra slot.
            return 0.0 if self._slot_free() else math.inf
        wait, tat = gcra(self._tat, now, interval, (rate.burst - 1) * interval)
        if wait > 0:
            return wait
        self._tat = tat
        return 0.0

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if not self._depth:
            return
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(None if math.isinf(seconds) else seconds):
                await self._wake.wait()

    def _next_waiter(self) -> asyncio.Future[bool] | None:
        """Round-robin between callers, first come first served within one."""
        while self._queues:
            client = next(iter(self._queues))
            queue = self._queues.pop(client)
            waiter = queue.popleft()
            if queue:
                self._queues[client] = queue  # to the back of the round
            self._depth -= 1
            if not waiter.done():
                return waiter
        return None

    # -- vendor pauses ----------------------------------------------------------------------------

    def pause(self, seconds: float) -> bool:
        """Hold the queue for ``seconds`` (a vendor's Retry-After), at most ``max_pause_seconds``; True when
        this starts a new pause."""
        seconds = min(max(seconds, 0.0), self.settings.max_pause_seconds)
        now = self._clock.now()
        until = now + seconds
        if seconds <= 0 or until <= self._paused_until:
            return False
        fresh = now >= self._paused_until
        self._paused_until = until
        rate = self.settings.rate
        if rate is not None:
            self._tat = gcra_pause(self._tat, now, seconds, (rate.burst - 1) * rate.interval_seconds)
            bucket = self.settings.bucket
            if self.settings.is_global and bucket is not None:
                task = asyncio.get_running_loop().create_task(self._share_pause(bucket, seconds))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return fresh

    async def _share_pause(self, bucket: RateBucket, seconds: float) -> None:
        try:
            await self._store.pause(bucket, seconds)
        except StoreUnavailable as exc:
            self._logger.event(
                "ratelimit_store_unavailable",
                level="error",
                policy=self.settings.policy,
                detail=f"the vendor's pause holds in this process only: {exc}",
            )

    def close(self) -> None:
        for task in (self._task, *self._background):
            if task is not None:
                task.cancel()


class RateLimits:
    """The app-wide registry of limiters, kept across reloads, and the figures metrics export."""

    def __init__(self, store: RateLimitOps, logger: Logger) -> None:
        self.store = store
        self.logger = logger
        self._limiters: dict[tuple[str, ...], Limiter] = {}
        self._pending: list[tuple[Limiter, LimitSettings]] = []  # see _get
        # Per vendor: how long admitted requests waited (gateway_ratelimit_wait_seconds{vendor}) and
        # how many were refused with a 429 (gateway_ratelimit_rejected_total{vendor}).
        self.wait_seconds: dict[str, Histogram] = {}
        self.rejected: Counter[str] = Counter()
        self.rejected_by_reason: Counter[tuple[str, str]] = Counter()  # (vendor, reason)
        self.pauses: Counter[str] = Counter()  # vendor answers with Retry-After that held the queue
        self.store_fallbacks: Counter[str] = Counter()  # policy -> times the store was down
        self.clock: Clock = MONOTONIC  # read at every use, so a test may swap it before traffic starts

    def _get(self, key: tuple[str, ...], settings: LimitSettings) -> Limiter:
        """The limiter for ``key``: a new one, or the running one, whose new settings wait for ``commit``
        (a Runtime being built must not change the one serving)."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = Limiter(settings, self.store, self.logger, self)
        elif limiter.settings != settings:
            self._pending.append((limiter, settings))
        return limiter

    def families(self) -> Iterator[Family]:
        yield Family(
            "gateway_ratelimit_wait_seconds",
            "Time admitted requests waited in a rate-limit queue.",
            "histogram",
            ("vendor",),
            self.wait_seconds,
        )
        yield Family(
            "gateway_ratelimit_rejected",
            "Requests refused with 429 by the gateway.",
            "counter",
            ("vendor",),
            self.rejected,
        )
        yield Family(
            "gateway_ratelimit_queue_depth",
            "Requests waiting in the vendor's rate-limit queues (its own and its routes') now.",
            "gauge",
            ("vendor",),
            self.queued_per_vendor(),
        )

    def commit(self) -> None:
        pending, self._pending = self._pending, []
        for limiter, settings in pending:
            limiter.configure(settings)

    def discard(self) -> None:
        self._pending = []

    def vendor(self, vendor: Vendor) -> Limiter:
        """The vendor's limiter (every route of it shares one); without limits it only holds pauses."""
        rate = vendor.rate_limit
        bucket = None
        if rate is not None:
            bucket = RateBucket(
                tag=vendor.name, name="vendor", interval_seconds=rate.interval_seconds, burst=rate.burst
            )
        settings = LimitSettings(policy=vendor.name, rate=rate, concurrency=vendor.concurrency, bucket=bucket)
        return self._get(("vendor", vendor.name), settings)

    def route(self, vendor: Vendor, route: Route) -> Limiter | None:
        rate = route.rate_limit
        if rate is None:
            return None
        ident = f"{route.method} {route.path}"
        bucket = RateBucket(
            tag=vendor.name, name=f"route:{ident}", interval_seconds=rate.interval_seconds, burst=rate.burst
        )
        settings = LimitSettings(policy=f"{vendor.name}:{ident}", rate=rate, bucket=bucket)
        return self._get(("route", vendor.name, ident), settings)

    def client(self, client: Client) -> Limiter | None:
        rate = client.rate_limit
        if rate is None:
            return None
        bucket = RateBucket(
            tag=f"client:{client.name}",
            name="client",
            interval_seconds=rate.interval_seconds,
            burst=rate.burst,
        )
        settings = LimitSettings(policy=f"client:{client.name}", rate=rate, bucket=bucket)
        return self._get(("client", client.name), settings)

    @property
    def queued(self) -> int:
        """Requests waiting in any limiter's queue right now."""
        return sum(limiter.depth for limiter in self._limiters.values())

    def queued_per_vendor(self) -> Counter[str]:
        """vendor -> requests waiting in its own queue and its routes' right now (the dashboard's,
        gateway_ratelimit_queue_depth{vendor})."""
        queued: Counter[str] = Counter()
        for key, limiter in self._limiters.items():
            if key[0] != "client":
                queued[key[1]] += limiter.depth
        return queued

    def waits(self, vendor: str) -> Histogram:
        """The vendor's gateway_ratelimit_wait_seconds (kept across reloads, like the limiters)."""
        histogram = self.wait_seconds.get(vendor)
        if histogram is None:
            histogram = self.wait_seconds[vendor] = Histogram(WAIT_BUCKETS)
        return histogram

    def observe_wait(self, vendor: str, seconds: float) -> None:
        self.waits(vendor).observe(seconds)

    def count_rejection(self, vendor: str, reason: str) -> None:
        self.rejected[vendor] += 1
        self.rejected_by_reason[(vendor, reason)] += 1

    def close(self) -> None:
        for limiter in self._limiters.values():
            limiter.close()
