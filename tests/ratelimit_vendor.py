"""A local vendor that records when each request arrived, for tests that measure what a vendor sees."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Arrivals:
    """Arrival times per path (on the vendor's clock), how many were in flight at most, scripted 429s."""

    times: dict[str, list[float]] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0  # seconds each answer takes
    gate: asyncio.Event | None = None  # when set to an Event, answers wait until it is set
    # path -> answers still to give as 429 with this Retry-After value (or with what this makes, at once)
    throttle: dict[str, list[str | Callable[[], str]]] = field(default_factory=dict)
    throttled_at: list[float] = field(default_factory=list)
    throttled_wall: list[float] = field(default_factory=list)  # time.time() at each scripted arrival
    throttled: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first scripted answer
    throttle_status: int = 429

    def all(self) -> list[float]:
        return sorted(t for times in self.times.values() for t in times)


ARRIVALS = web.AppKey("arrivals", Arrivals)


def rate_vendor(clock: Callable[[], float] = time.monotonic) -> web.Application:
    """``clock`` stamps arrivals: pass a test's ManualClock.now to measure on the limiters' own clock."""

    async def handle(request: web.Request) -> web.Response:
        state = request.app[ARRIVALS]
        now, wall = clock(), time.time()
        state.times.setdefault(request.path, []).append(now)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.delay:
                await asyncio.sleep(state.delay)
            if state.gate is not None:
                await state.gate.wait()
            pending = state.throttle.get(request.path)
            if pending:
                scripted = pending.pop(0)
                retry_after = scripted if isinstance(scripted, str) else scripted()
                state.throttled_at.append(now)
                state.throttled_wall.append(wall)
                state.throttled.set()
                return web.json_response(
                    {"error": "slow down"}, status=state.throttle_status, headers={"Retry-After": retry_after}
                )
            return web.json_response({"ok": True, "path": request.path})
        finally:
            state.in_flight -= 1

    app = web.Application()
    app[ARRIVALS] = Arrivals()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def long_run_rate(times: list[float], skip: int) -> float:
    """Requests per second after the first ``skip`` (the initial burst): the steady pace a vendor sees."""
    steady = sorted(times)[skip:]
    if len(steady) < 2:
        return 0.0
    return (len(steady) - 1) / (steady[-1] - steady[0])


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most requests in any ``window`` seconds (half-open), as a sliding-window vendor counts."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
