"""Stages: one file per stage. ``route_stages`` decides, once per route at load, which ones run.

Execution order (docs/architecture.md), after client auth (``Runtime.resolve``): idempotency ->
validate request -> transform request -> async delivery (202 and done) -> retry -> circuit breaker ->
rate limit -> [faults] -> [forward] -> validate response -> transform response. The retry stage loops
over the vendor-facing ones, so every attempt asks the breaker, takes a rate-limit turn and obeys
vendor pauses (an injected fault too). Response-side work lives in the same stages as their request
side, after ``call_next``. A route that asks for nothing gets no stages at all, so a plain
pass-through costs nothing but the forwarder.
"""

from __future__ import annotations

from .config import Config, Route, Vendor
from .features.circuit.stage import circuit_stage
from .features.delivery.stage import delivery_stage
from .features.faults.stage import fault_stage
from .features.idempotency.stage import idempotency_stage
from .features.payload.stage import RequestPayload, ResponsePayload
from .features.ratelimit.stage import ratelimit_stage
from .features.retry.stage import retry_stage
from .observability.tracing import VendorCallSpan
from .pipeline import Stage
from .services import Services


def route_stages(config: Config, vendor: Vendor, route: Route | None, services: Services) -> list[Stage]:
    stages: list[Stage] = []
    # First: the caller is known (Exchange.client, the key's scope) and the body not read yet.
    if (idempotency := idempotency_stage(vendor, route, services)) is not None:
        stages.append(idempotency)
    if route is not None and (route.request_schema or route.request_transform):
        stages.append(RequestPayload(route))
    # Stores the request as the vendor will get it and answers 202; the response stages never see it.
    if (delivery := delivery_stage(vendor, route, services)) is not None:
        stages.append(delivery)
    if route is not None and (route.response_schema or route.response_transform):
        stages.append(ResponsePayload(route, services))
    if (retry := retry_stage(vendor, services)) is not None:
        stages.append(retry)
    if (circuit := circuit_stage(vendor, services)) is not None:
        stages.append(circuit)
    # Last, right before the forwarder: a request waits for its turn only once everything that could
    # refuse it has passed, and the vendor's answer (429 + Retry-After) is seen before response stages.
    if (ratelimit := ratelimit_stage(config, vendor, route, services)) is not None:
        stages.append(ratelimit)
    if services.tracing is not None:  # one client span per vendor call
        stages.append(VendorCallSpan(services.tracing))
    # Innermost: an injected fault meets every stage a vendor's own would (retry, breaker, rate limit).
    if (faults := fault_stage(vendor, route, services)) is not None:
        stages.append(faults)
    return stages


def delivery_stages(config: Config, vendor: Vendor, route: Route | None, services: Services) -> list[Stage]:
    """What a queued delivery passes on its way to the forwarder: the breaker and the rate limits (the
    delivery workers retry on their own schedule, so no retry stage)."""
    stages: list[Stage] = []
    if (circuit := circuit_stage(vendor, services)) is not None:
        stages.append(circuit)
    if (ratelimit := ratelimit_stage(config, vendor, route, services)) is not None:
        stages.append(ratelimit)
    if (faults := fault_stage(vendor, route, services)) is not None:
        stages.append(faults)
    return stages
