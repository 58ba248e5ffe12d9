"""Circuit breakers per vendor (docs/configuration.md): stop calling a vendor that is down.

A ``Breaker`` is this process's view of one vendor's breaker, whose state lives in the store
(``store.circuits``: the rules, and with Redis one state for every replica):

- closed: every call's outcome is reported to the store. A failure is a connection error, a timeout
  or a 5xx answer; a call the gateway refused before the vendor saw it counts for nothing. On the
  memory store each outcome is reported at once (no I/O); on Redis they are batched, one report per
  ``REPORT_INTERVAL_SECONDS`` at most, so a fleet's breaker opens within that interval of the
  threshold and a request costs no round trip. A report also brings back the fleet's state, and a
  process that has not reported for ``REFRESH_SECONDS`` reads it before its next request goes.
- open: requests are refused with 503 ``circuit-open`` and ``Retry-After`` without calling the vendor.
- once ``open_seconds`` are over, the next request asks the store for the probe lease; the one that
  gets it calls the vendor (half-open) and its outcome closes the breaker or opens it again; the others
  are refused meanwhile (``Retry-After: 1``).

If the store is down, the breaker runs on this process's own state for a while (``store.fallback``:
logged as ``circuit_store_unavailable``), so the vendor stays protected per process.
Transitions are logged once, by the process that caused them: ``circuit_opened``, ``circuit_closed``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal

from ...config import Circuit, Vendor
from ...errors import CircuitOpen
from ...observability.logging import Logger
from ...observability.metrics import Family
from ...store import Store
from ...store.fallback import StoreFallback
from .store import CircuitOps, CircuitSettings, CircuitView, MemoryCircuits, Outcome

REPORT_INTERVAL_SECONDS = 0.2
# A closed breaker reads the shared state again when its view is older than this (Redis only).
REFRESH_SECONDS = 1.0
REFRESH_WAIT_SECONDS = 0.1  # how long a request waits for that read (it goes on in the background)
# While another process's probe is out, ask the store again at most this often.
PROBE_RECHECK_SECONDS = 0.25

Ticket = str | None  # the probe's token, or None for an ordinary call


def settings_of(circuit: Circuit) -> CircuitSettings:
    return CircuitSettings(
        failure_ratio=circuit.failure_ratio,
        min_requests=circuit.min_requests,
        window_seconds=circuit.window_seconds,
        open_seconds=circuit.open_seconds,
    )


class Breaker:
    """One vendor's breaker as this process sees it; see the module docstring."""

    def __init__(self, vendor: Vendor, store: Store, logger: Logger, registry: CircuitBreakers) -> None:
        self.vendor = vendor.name
        self._store = store.circuits
        self._local = MemoryCircuits()
        self._logger = logger
        self._registry = registry
        self._shared = store.shared
        self.configure(vendor)
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self._open_until = 0.0  # monotonic, while open
        self._recheck_at = 0.0  # half-open with someone else's probe out: next time to ask
        self._successes = 0
        self._failures = 0
        self._reported_at = time.monotonic()
        self._report: asyncio.TimerHandle | None = None
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._fallback = StoreFallback(
            event="circuit_store_unavailable",
            what="breaker",
            key=("vendor", self.vendor),
            counts=registry.store_fallbacks,
            logger=logger,
            now=time.monotonic,
        )

    def configure(self, vendor: Vendor) -> None:
        self.settings = settings_of(vendor.circuit)
        # A probe that never reports (its process died) frees the lease after the vendor's timeout.
        self.lease_seconds = vendor.timeout.total_seconds + 1.0

    @property
    def is_open(self) -> bool:
        return self.state != "closed"

    # -- before the call --------------------------------------------------------------------------

    def admits_now(self) -> bool:
        """Whether a call may go as usual (ticket None) without asking anything: closed, and (Redis)
        the fleet's view fresh. False: ``admit`` decides."""
        return self.state == "closed" and (
            not self._shared or time.monotonic() - self._reported_at <= REFRESH_SECONDS
        )

    async def admit(self) -> Ticket:
        """None to call the vendor as usual, a token when this call is the half-open probe; raises
        ``CircuitOpen`` when the vendor must not be called."""
        now = time.monotonic()
        if self.state == "closed":
            if not self._shared or now - self._reported_at <= REFRESH_SECONDS:
                return None
            # Nothing reported for a while, so nothing heard from the fleet either: read its state
            # first (one round trip per REFRESH_SECONDS; concurrent requests go on the current view),
            # but wait for it only briefly: a slow store must not hold requests up.
            self._reported_at = now
            await asyncio.wait({self._spawn(self._flush())}, timeout=REFRESH_WAIT_SECONDS)
            if not self.is_open:
                return None
            now = time.monotonic()
        if self.state == "open" and now < self._open_until:
            self._registry.rejected[self.vendor] += 1
            raise self._refusal(self._open_until - now)
        if self.state == "half_open" and now < self._recheck_at:
            self._registry.rejected[self.vendor] += 1
            raise self._refusal(1.0)
        token = os.urandom(8).hex()
        view = await self._call(
            lambda ops: ops.circuit_probe(
                self.vendor, self.settings, token=token, lease_seconds=self.lease_seconds
            )
        )
        self._apply(view)
        if view.probe:
            return token
        if view.state == "closed":
            return None
        self._registry.rejected[self.vendor] += 1
        if view.state == "half_open":
            self._recheck_at = time.monotonic() + PROBE_RECHECK_SECONDS
            raise self._refusal(1.0)
        raise self._refusal(view.wait_seconds)

    def _refusal(self, wait: float) -> CircuitOpen:
        retry = max(1, math.ceil(wait))
        return CircuitOpen(
            f"vendor {self.vendor} is failing; the gateway stopped calling it for now "
            f"(circuit open, next try in about {retry}s)",
            headers={"Retry-After": str(retry)},
        )

    # -- after the call ---------------------------------------------------------------------------

    def finished_now(self, ticket: Ticket, outcome: Outcome) -> bool:
        """Count an ordinary call's outcome when that needs no report now (nothing to report, or a
        success inside the memory store's bucket); False: ``report`` must."""
        if ticket is not None:
            return False
        if outcome == "none":
            return True
        if outcome != "success" or self._shared:
            return False
        if time.monotonic() - self._reported_at >= self.settings.bucket_seconds:
            return False
        # Successes alone are counted here and reported once per bucket (or with the next failure):
        # a passing call costs an increment. A success opens a breaker only when enough failures
        # are in already, so that decision may come up to one bucket later; a failure's, never.
        self._successes += 1
        return True

    async def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        if not self.finished_now(ticket, outcome):
            await self.report(ticket, outcome)

    async def report(self, ticket: Ticket, outcome: Outcome) -> None:
        """What ``finished_now`` left: the probe's outcome, a failure, or a success whose report is due."""
        if ticket is not None:
            view = await self._call(
                lambda ops: ops.circuit_settle(self.vendor, self.settings, token=ticket, outcome=outcome)
            )
            self._apply(view, probe=outcome)
            return
        if outcome == "success":
            self._successes += 1
        else:
            self._failures += 1
        if not self._shared:
            await self._flush()
        else:
            self._schedule_report()

    def abandon(self, ticket: Ticket) -> None:
        """The call was cancelled (the caller went away): hand a probe lease back in the background."""
        if ticket is not None:
            self._spawn(self.finish(ticket, "none"))

    def _report_now(self) -> None:
        self._report = None
        self._spawn(self._flush())

    def _schedule_report(self) -> None:
        """One report per REPORT_INTERVAL_SECONDS at most, and never two at once."""
        if self._report is None and not self._flushing:
            delay = max(0.0, self._reported_at + REPORT_INTERVAL_SECONDS - time.monotonic())
            self._report = asyncio.get_running_loop().call_later(delay, self._report_now)

    async def _flush(self) -> None:
        successes, failures = self._successes, self._failures
        self._successes = self._failures = 0
        self._reported_at = time.monotonic()
        self._flushing = True
        try:
            view = await self._call(
                lambda ops: ops.circuit_report(
                    self.vendor, self.settings, successes=successes, failures=failures
                )
            )
        finally:
            self._flushing = False
        self._apply(view)
        if self._shared and (self._successes or self._failures):
            self._schedule_report()  # outcomes that came in while this report was out

    # -- state ------------------------------------------------------------------------------------

    async def _call(self, op: Callable[[CircuitOps], Awaitable[CircuitView]]) -> CircuitView:
        if not self._fallback.active:
            try:
                return await op(self._store)
            except Exception as exc:  # see store.fallback: a store problem is never the caller's 500
                self._fallback.failed(exc)
        return await op(self._local)

    def _apply(self, view: CircuitView, *, probe: Outcome | None = None) -> None:
        now = time.monotonic()
        self.state = view.state
        if view.state == "open":
            self._open_until = now + view.wait_seconds
        if not view.changed:
            return
        if view.state == "open":
            self._registry.opened[self.vendor] += 1
            fields: dict[str, object] = {"open_seconds": self.settings.open_seconds}
            if probe is not None:
                fields["reason"] = "the half-open probe failed"
            else:
                fields |= {
                    "reason": "failure ratio reached",
                    "requests": view.requests,
                    "failures": view.failures,
                    "failure_ratio": self.settings.failure_ratio,
                    "window_seconds": self.settings.window_seconds,
                }
            self._logger.event("circuit_opened", level="warning", vendor=self.vendor, **fields)
        elif view.state == "closed":
            self._logger.event("circuit_closed", vendor=self.vendor, reason="the half-open probe succeeded")

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # a background report must never surface as an unretrieved error
                self._logger.exception("circuit_report_failed", exc, vendor=self.vendor)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        if self._report is not None:
            self._report.cancel()
        for task in self._tasks:
            task.cancel()


class CircuitBreakers:
    """The app-wide breakers per vendor, kept across reloads, and the figures metrics export."""

    def __init__(self, store: Store, logger: Logger) -> None:
        self.store = store
        self.logger = logger
        self._breakers: dict[str, Breaker] = {}
        self._pending: list[tuple[Breaker, Vendor | None]] = []  # see breaker()
        self.rejected: Counter[str] = Counter()  # requests refused because the circuit was open
        self.opened: Counter[str] = Counter()  # times this process opened the vendor's circuit
        self.store_fallbacks: Counter[str] = Counter()

    def breaker(self, vendor: Vendor) -> Breaker | None:
        """The vendor's breaker (created or reconfigured), or None when ``circuit.enabled = false``."""
        breaker = self._breakers.get(vendor.name)
        if not vendor.circuit.enabled:
            if breaker is not None:
                self._pending.append((breaker, None))  # not in use: gateway_circuit_open reads 0
            return None
        if breaker is None:
            breaker = self._breakers[vendor.name] = Breaker(vendor, self.store, self.logger, self)
        else:
            self._pending.append((breaker, vendor))  # the running Runtime keeps it as it is until commit
        return breaker

    def commit(self) -> None:
        pending, self._pending = self._pending, []
        for breaker, vendor in pending:
            if vendor is None:
                breaker.state = "closed"
            else:
                breaker.configure(vendor)

    def discard(self) -> None:
        self._pending = []

    def open_state(self) -> dict[str, int]:
        """vendor -> 1 while its circuit is open or half-open here, else 0 (gateway_circuit_open)."""
        return {name: int(b.is_open) for name, b in sorted(self._breakers.items())}

    def families(self) -> Iterator[Family]:
        yield Family(
            "gateway_circuit_open",
            "1 while the vendor's circuit breaker is open or half-open here.",
            "gauge",
            ("vendor",),
            self.open_state(),
        )

    def close(self) -> None:
        for breaker in self._breakers.values():
            breaker.close()
