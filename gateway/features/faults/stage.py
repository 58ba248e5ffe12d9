"""The fault stage: the innermost one, right before the forwarder, so an injected fault meets every stage
a real one does. The retry stage sees an aborted answer with a ``retry_on`` status or a reset and tries
again; the breaker counts both as failures; the rate limit gave the call its turn and its concurrency
slot; the request metrics and alerts see the status the caller gets.

An injected abort or reset counts as a vendor call (``Exchange.attempts``), since that is how the retry
and breaker stages tell a vendor's failure from a refusal of the gateway's own. A delay stands for a
slow vendor: it counts as upstream time and against the vendor's ``timeout.total_seconds`` (and the
deadline of all attempts together); one longer than what is left waits that long and ends as a vendor
timeout would (504, retried as a timeout, a breaker failure). The kind injected is left in
``Exchange.fault`` for the access record (the last one of the request: after a delay, an abort or
reset that followed), and counted in ``gateway_faults_injected_total{vendor,kind}``.

With ``header_control``, a request carrying ``X-Gateway-Fault`` gets what it asks for on every attempt
instead of the draws (a malformed one is a 400). The forwarder never sends that field to a vendor,
whether or not faults are on.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from multidict import CIMultiDict

from ...config import Faults, Route, Vendor
from ...errors import GatewayTimeout, VendorUnreachable
from ...messages import Answer
from ...observability.metrics import Counts
from ...pipeline import Exchange, Handler
from ...services import Services
from .policy import FAULT_HEADER, Draws, Plan, parse_fault_header


class FaultStage:
    def __init__(self, vendor: Vendor, faults: Faults, counts: Counts) -> None:
        self.vendor = vendor.name
        self.total_seconds = vendor.timeout.total_seconds
        self.header_control = faults.header_control
        self.draws = Draws(
            delay=faults.delay_percent / 100.0,
            delay_seconds=faults.delay_seconds,
            abort=faults.abort_percent / 100.0,
            abort_status=faults.abort_status,
            reset=faults.reset_percent / 100.0,
        )
        self.counts = counts

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        plan: Plan
        if self.header_control and FAULT_HEADER in ex.request.headers:
            plan = parse_fault_header(ex.request.headers.getall(FAULT_HEADER))
        else:
            plan = self.draws.draw()
        if plan.delay_seconds:
            await self._delay(ex, plan.delay_seconds)
        if plan.abort_status is not None:
            self._injected(ex, "abort")
            ex.attempts += 1
            return self._abort(ex, plan.abort_status)
        if plan.reset:
            self._injected(ex, "reset")
            ex.attempts += 1
            raise VendorUnreachable(f"vendor {self.vendor} is unreachable: connection reset (injected fault)")
        return await call_next(ex)

    def _injected(self, ex: Exchange, kind: str) -> None:
        ex.fault = kind
        self.counts[(self.vendor, kind)] += 1

    async def _delay(self, ex: Exchange, seconds: float) -> None:
        self._injected(ex, "delay")
        now = time.perf_counter()
        if ex.deadline is None:
            # No retry stage set one: this attempt's own timeout, which the delay counts against.
            ex.deadline = now + self.total_seconds
        left = ex.deadline - now
        if seconds >= left:
            await asyncio.sleep(max(left, 0.0))
            ex.upstream_seconds += time.perf_counter() - now
            ex.attempts += 1
            raise GatewayTimeout(f"vendor {self.vendor} did not answer within {self.total_seconds:g}s")
        await asyncio.sleep(seconds)
        ex.upstream_seconds += time.perf_counter() - now

    def _abort(self, ex: Exchange, status: int) -> Answer:
        headers: CIMultiDict[str] = CIMultiDict({"X-Request-Id": ex.request_id})
        if ex.method == "HEAD":
            return Answer(status=status, headers=headers)
        headers["Content-Type"] = "application/json"
        message = f"fault injected by the gateway: vendor {self.vendor} answered {status}"
        body = orjson.dumps({"error": {"type": "injected_fault", "message": message}})
        ex.bytes_out = len(body)
        return Answer(status=status, headers=headers, body=body)


def fault_stage(vendor: Vendor, route: Route | None, services: Services) -> FaultStage | None:
    """The stage for this vendor and route, or None when nothing can be injected there (a route's own
    ``faults`` replace the vendor's)."""
    faults = route.faults if route is not None and route.faults is not None else vendor.faults
    if faults is None or not faults.enabled:
        return None
    return FaultStage(vendor, faults, services.faults)
