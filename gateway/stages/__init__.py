"""Stages: one file per stage. ``route_stages`` decides, once per route at load, which ones run.

Execution order (DESIGN.md): client auth -> idempotency -> validate request -> transform request
-> rate limit -> [forward] -> validate response -> transform response. Response-side work lives in
the same stages as their request side, after ``call_next``. A route that asks for nothing gets no
stages at all, so a plain pass-through costs nothing but the forwarder.
"""

from __future__ import annotations

from ..config import Config, Route, Vendor
from ..pipeline import Services, Stage
from ..tracing import VendorCallSpan
from .client_auth import ClientAuth
from .idempotency import idempotency_stage
from .payload import RequestPayload, ResponsePayload
from .ratelimit import ratelimit_stage


def route_stages(config: Config, vendor: Vendor, route: Route | None, services: Services) -> list[Stage]:
    stages: list[Stage] = []
    if config.clients:  # every handler, pass-through ones too: no request reaches a vendor unidentified
        stages.append(ClientAuth(config.clients, vendor))
    # After client auth (it names the caller the key is scoped to), before anything that reads the body.
    if (idempotency := idempotency_stage(vendor, route, services)) is not None:
        stages.append(idempotency)
    if route is not None and (route.request_schema or route.request_transform):
        stages.append(RequestPayload(route))
    if route is not None and (route.response_schema or route.response_transform):
        stages.append(ResponsePayload(route, services))
    # Last, right before the forwarder: a request waits for its turn only once everything that could
    # refuse it has passed, and the vendor's answer (429 + Retry-After) is seen before response stages.
    if (ratelimit := ratelimit_stage(config, vendor, route, services)) is not None:
        stages.append(ratelimit)
    if services.tracing is not None:  # innermost: one client span per vendor call
        stages.append(VendorCallSpan(services.tracing))
    return stages
