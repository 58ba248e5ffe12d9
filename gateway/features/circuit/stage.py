"""The circuit-breaker stage: between the retry stage and the rate-limit stage, so every attempt asks
the breaker first (an open circuit stops a retry loop too) and reports how the vendor did.

An open circuit is a 503 ``circuit-open`` problem with ``Retry-After``, and the vendor is not called.
A failure is a connection error, a timeout or a 5xx answer; an attempt the gateway itself refused
before the vendor saw it (a rate-limit 429, a spent deadline) says nothing about the vendor.
"""

from __future__ import annotations

import asyncio

from ...config import Vendor
from ...errors import CallerFault, GatewayError
from ...messages import Answer
from ...pipeline import Exchange, Handler
from ...services import Services
from ..retry.policy import retry_reason
from .policy import Breaker
from .store import Outcome


class CircuitStage:
    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        breaker = self.breaker
        # The usual case without a coroutine each way: closed going in, a counted outcome coming out.
        ticket = None if breaker.admits_now() else await breaker.admit()
        before = ex.attempts
        outcome: Outcome = "none"
        try:
            response = await call_next(ex)
        except asyncio.CancelledError:
            breaker.abandon(ticket)
            raise
        except CallerFault:
            await breaker.finish(ticket, "none")  # the caller's doing says nothing about the vendor
            raise
        except GatewayError as exc:
            if ex.attempts > before and retry_reason(exc) is not None:
                outcome = "failure"
            elif ex.attempts > before:
                outcome = "success"  # it answered, with something the gateway could not use
            await breaker.finish(ticket, outcome)
            raise
        except Exception:
            await breaker.finish(ticket, outcome)
            raise
        if ex.attempts > before:
            outcome = "failure" if response.status >= 500 else "success"
        if not breaker.finished_now(ticket, outcome):
            await breaker.report(ticket, outcome)
        return response


def circuit_stage(vendor: Vendor, services: Services) -> CircuitStage | None:
    breaker = services.circuits.breaker(vendor)
    return CircuitStage(breaker) if breaker is not None else None
