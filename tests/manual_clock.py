"""A clock for the rate limiters that moves only when the test moves it (``RateLimits.clock``).

Timing tests on a real socket measure the machine as much as the gateway: on a loaded 2-core box a
wake-up comes late, a burst reaches the vendor spread out, and a bound that holds on an idle laptop
fails. With this clock the limiters' schedule is the only source of time: the test lets everything that
can happen at the current instant happen (requests reach the vendor, are queued or refused), then moves
the clock to the next deadline a limiter waits for, and so on. The vendor stamps arrivals with the same
clock, so what the test measures is exactly what the limiter decided, however slow the machine is.

Only waiting on the real event loop is real: ``until`` polls a condition with a generous deadline, which
a slow machine can only make slower, never wrong.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from gateway.store import MemoryStore

SETTLE_TIMEOUT = 30.0  # real seconds a condition may take to come true before the test fails


class ManualTimeout:
    """``asyncio.timeout`` counted on a ManualClock: it expires when the clock is moved past it."""

    def __init__(self, clock: ManualClock, seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._inner = asyncio.timeout(None)
        self.deadline = math.inf

    async def __aenter__(self) -> ManualTimeout:
        await self._inner.__aenter__()
        if self._seconds is not None:
            self.deadline = self._clock.now() + self._seconds
            if self._seconds <= 0:
                self.expire()
            else:
                self._clock.timers.add(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._clock.timers.discard(self)
        self._clock.expiring.discard(self)
        return await self._inner.__aexit__(kind, exc, tb)

    def expire(self) -> None:
        self._clock.timers.discard(self)
        self._clock.expiring.add(self)
        self._inner.reschedule(asyncio.get_running_loop().time())  # fires on the loop's next turn


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.timers: set[ManualTimeout] = set()  # entered, not yet expired
        self.expiring: set[ManualTimeout] = set()  # expired, their task not yet out of the block

    def now(self) -> float:
        return self._now

    def timeout(self, seconds: float | None) -> ManualTimeout:
        return ManualTimeout(self, seconds)

    @property
    def settled(self) -> bool:
        """No expired timeout is still unwinding: everything the last move woke has run."""
        return not self.expiring

    def next_deadline(self) -> float | None:
        return min((t.deadline for t in self.timers), default=None)

    def set(self, when: float) -> None:
        """Move to ``when`` (never back) and expire every timeout due by then."""
        self._now = max(self._now, when)
        for timer in sorted((t for t in self.timers if t.deadline <= self._now), key=lambda t: t.deadline):
            timer.expire()

    def install(self, app: web.Application) -> ManualClock:
        """Make this the clock of the app's limiters (and of its memory store's global schedules)."""
        services = app.services
        services.ratelimits.clock = self
        if isinstance(services.store, MemoryStore):
            services.store.rates.clock = self.now
        return self


async def until(condition: Callable[[], bool], what: str = "condition") -> None:
    """Wait, in real time, until ``condition()`` holds."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.002)


async def settle(clock: ManualClock, idle: Callable[[], bool], what: str) -> None:
    """Wait until ``idle()`` holds, and still holds a few loop turns later: a task just woken or just
    created (a limiter's dispatcher) runs within one turn and would change what ``idle`` counts."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    stable = 0
    while stable < 3:
        await asyncio.sleep(0 if stable else 0.002)
        stable = stable + 1 if clock.settled and idle() else 0
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


async def advance(
    clock: ManualClock,
    idle: Callable[[], bool],
    *,
    to: float | None = None,
    done: Callable[[], bool] | None = None,
) -> None:
    """Move the clock deadline by deadline, letting the system go ``idle`` at each instant first.

    Stops at time ``to`` (moving there last), or once ``done()`` holds; ``idle`` says that every request
    has got as far as it can at the current instant (reached the vendor, or is queued, or was refused).
    """
    assert (to is None) != (done is None)
    while True:
        await settle(clock, idle, f"the gateway to settle at {clock.now():.3f}")
        if done is not None and done():
            return
        nxt = clock.next_deadline()
        if to is not None and (nxt is None or nxt > to):
            clock.set(to)
            await settle(clock, idle, f"the gateway to settle at {to:.3f}")
            return
        if nxt is None:  # nothing waits for the clock: what is left finishes on its own
            assert done is not None
            await until(done, "the requests to finish")
            return
        # At least one tick on: a deadline that rounds to now must not leave the clock standing still.
        clock.set(max(nxt, math.nextafter(clock.now(), math.inf)))


def queued(app: web.Application) -> int:
    """Requests waiting in any of the app's rate-limit queues."""
    count: int = app.services.ratelimits.queued
    return count
