"""The async delivery stage (docs/http.md): answer 202 now, deliver from a durable queue.

On a route with ``delivery = "async"``, or ``delivery = "prefer"`` and a caller that sent
``Prefer: respond-async`` (RFC 7240; then the answer carries ``Preference-Applied: respond-async``),
the request is stored in the queue and the caller gets ``202 Accepted`` with
``Location: /_gateway/deliveries/ID`` and a JSON body naming the delivery. The workers
(``gateway.features.delivery.workers``) deliver it later with the vendor's retry policy, rate limits and
breaker.

It sits after client auth, idempotency and the request payload stages, so what is stored is the request
as the vendor will get it (validated, transformed, the caller's gateway key gone), and before the response
stages and the vendor-facing ones: the delivery record keeps the vendor's answer as it came (a route's
``response_schema`` and ``response_transform`` apply to sync answers only). Credentials are never
stored: the forwarder injects them at each delivery, and any header the vendor's ``auth`` would set is
dropped here.

Exactly one effect at the vendor: the idempotency key is sent under the vendor's
``idempotency.forward_header`` with every delivery attempt; a caller that sent no key gets one made from
the delivery id. Without a forward_header the caller's ``Idempotency-Key`` (recorded with the delivery)
passes as an ordinary header, and a POST or PATCH is not repeated. A keyed caller repeating itself gets
the stored 202 back from the idempotency stage, not a second delivery. A store that cannot take the
request is a 503: nothing is accepted that is not stored.
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs

from ...config import Auth, Route, Vendor
from ...errors import ServiceUnavailable
from ...messages import Answer, json_answer
from ...pipeline import Exchange, Handler
from ...services import Services
from ...store import StoreUnavailable
from .queue import LOCATION_PREFIX, new_delivery_id
from .store import DeliveryRequest

PREFER = "Prefer"
RESPOND_ASYNC = "respond-async"
# Request fields that are about the exchange with the gateway, not the vendor.
NOT_STORED = frozenset({"prefer", "content-length"})


def wants_async(values: list[str]) -> bool:
    """Whether ``Prefer`` field values ask for ``respond-async`` (preferences are comma-separated
    tokens, each perhaps with ``=value`` and ``;`` parameters)."""
    for value in values:
        for preference in value.split(","):
            token = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
            if token == RESPOND_ASYNC:
                return True
    return False


def credential_headers(vendor: Vendor) -> frozenset[str]:
    """Lower-case names of the headers the vendor's ``auth`` sets at send time."""
    auth = vendor.auth
    if auth is None:
        return frozenset()
    if isinstance(auth, Auth) and auth.type == "header":
        return frozenset({auth.name.lower()})
    if isinstance(auth, Auth) and auth.type == "query":
        return frozenset()
    return frozenset({"authorization"})


class AsyncDelivery:
    def __init__(self, vendor: Vendor, route: Route, services: Services) -> None:
        self.vendor = vendor
        self.always = route.delivery == "async"
        self.deliveries = services.deliveries
        self.drop = NOT_STORED | credential_headers(vendor)
        self.forward_header = vendor.idempotency.forward_header

    async def __call__(self, ex: Exchange, call_next: Handler) -> Answer:
        preferred = False
        if not self.always:
            if not wants_async(ex.request.headers.getall(PREFER, [])):
                return await call_next(ex)
            preferred = True
        body = await ex.read_body()
        delivery_id = new_delivery_id()
        key = ex.idempotency_key
        if self.forward_header is not None:
            key = key or f"gw-{delivery_id}"
            ex.headers.popall("Idempotency-Key", None)
            ex.headers[self.forward_header] = key
        headers = tuple((name, value) for name, value in ex.headers.items() if name.lower() not in self.drop)
        request = DeliveryRequest(
            vendor=self.vendor.name,
            method=ex.method,
            path=ex.path,
            query=ex.query or "",  # a bare "?" is not kept in the queue
            segments=ex.segments,
            headers=headers,
            body=body,
            client=ex.client,
            request_id=ex.request_id,
            idempotency_key=key,
            forward_header=self.forward_header,
        )
        try:
            # Shielded: once the caller's request is on its way into the queue, a caller that leaves
            # does not take it back out (nothing accepted is lost; it is simply not told the id).
            await asyncio.shield(self.deliveries.enqueue(delivery_id, request))
        except StoreUnavailable as exc:
            raise ServiceUnavailable(
                f"the delivery queue is unavailable, so the request was not accepted: {exc}",
                headers={"Retry-After": "1"},
            ) from None
        location = LOCATION_PREFIX + delivery_id
        response = json_answer(
            {"id": delivery_id, "state": "queued", "location": location, "vendor": self.vendor.name},
            status=202,
            headers={hdrs.LOCATION: location, "X-Request-Id": ex.request_id},
        )
        if preferred:
            response.headers["Preference-Applied"] = RESPOND_ASYNC
        ex.bytes_out = len(response.body or b"")
        return response


def delivery_stage(vendor: Vendor, route: Route | None, services: Services) -> AsyncDelivery | None:
    if route is None or route.delivery == "sync":
        return None
    return AsyncDelivery(vendor, route, services)
