"""Everything built from one loaded config, and how a request finds its handler in it.

A ``Runtime`` is built whole from a config (``build_runtime``) and then committed (``commit``): the
limiters and breakers it shares with the running one (``Services``, kept across reloads) take their new
settings only at the commit, so a build that fails half-way leaves the running config untouched.
``Live`` holds the Runtime new requests start on and swaps it in one assignment.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import NamedTuple

from multidict import CIMultiDictProxy

from .config import Config, Route, Vendor
from .errors import NotFound
from .features.client_auth.identity import Authenticator, VendorAccess
from .pipeline import Exchange, Handler, compose
from .services import Services
from .stages import delivery_stages, route_stages
from .target import Target
from .upstream.forwarder import Forwarder, vendor_transport
from .versioning import unversioned


class Resolved(NamedTuple):
    vendor: Vendor
    route: Route | None  # None: the vendor's pass-through (no route matched, expose = "all")
    handler: Handler
    target: Target  # the caller's target, with a pinned path_prefix version taken off
    # With [clients]: who called, and whether its key came in Authorization (then not forwarded).
    client: str | None = None
    key_in_authorization: bool = False


_ANONYMOUS: tuple[None, bool] = (None, False)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything built from one loaded config; replaced whole on reload, never mutated."""

    config: Config
    # Per vendor: the pass-through handler (no route matched).
    passthrough: dict[str, Handler]
    # Per route, by identity (routes live as long as their config, and so as this Runtime).
    route_handlers: dict[int, Handler]
    # With [clients]: callers are identified before a 404 too, so unknown callers learn no vendor names,
    # and each vendor's allow rules are checked before any stage.
    authenticator: Authenticator | None = None
    access: dict[str, VendorAccess] = field(default_factory=dict)
    # What queued deliveries pass (breaker, rate limits, forwarder): per vendor, and per async route.
    delivery_passthrough: dict[str, Handler] = field(default_factory=dict)
    delivery_route_handlers: dict[int, Handler] = field(default_factory=dict)

    def resolve(
        self,
        method: str,
        target: Target,
        fields: CIMultiDictProxy[str],
        client_cert: frozenset[tuple[str, str]] | None = None,
    ) -> Resolved:
        """The vendor, route and handler for a caller's request, or 404; with [clients], the caller
        identified first (401 for an unknown one, before any 404: unknown callers learn no vendor
        names). Its allow rules are ``admit``'s, once the request has its Exchange."""
        client, key_in_authorization = (
            self.authenticator.identify(fields, client_cert) if self.authenticator is not None else _ANONYMOUS
        )
        vendor = self.config.vendors.get(target.vendor)
        if vendor is None:
            raise NotFound(f"no vendor named {target.vendor!r}")
        if vendor.version is not None and vendor.version.kind == "path_prefix":
            target = unversioned(target, vendor.version)
        route = vendor.find_route(method, target.segments)
        if route is not None:
            handler = self.route_handlers[id(route)]
        elif vendor.expose == "declared":
            raise NotFound(f"vendor {vendor.name!r} exposes no route for {method} {target.path or '/'}")
        else:
            handler = self.passthrough[vendor.name]
        return Resolved(vendor, route, handler, target, client, key_in_authorization)

    def admit(self, ex: Exchange) -> None:
        """With [clients]: 403 unless the caller's allow rules let it call this, before any stage."""
        if ex.client is not None:
            self.access[ex.vendor.name].check(ex.client, ex.method, ex.path, ex.segments)

    def delivery_handler(
        self, vendor_name: str, method: str, segments: tuple[str, ...]
    ) -> tuple[Vendor, Route | None, Handler] | None:
        """For a queued delivery, with the config in force now: its vendor, route and handler."""
        vendor = self.config.vendors.get(vendor_name)
        if vendor is None:
            return None
        route = vendor.find_route(method, segments)
        handler = self.delivery_route_handlers.get(id(route)) if route is not None else None
        return vendor, route, handler or self.delivery_passthrough[vendor.name]


@dataclass(slots=True, eq=False)
class Live:
    """The Runtime new requests start on. ``reload()`` swaps ``runtime`` whole, in one assignment: a
    request keeps the Runtime it started with, so nothing in flight sees half of a new config."""

    runtime: Runtime
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reload at a time


def build_runtime(config: Config, services: Services) -> Runtime:
    """Build every pipeline of ``config``. Nothing shared changes until ``commit``; after a failure,
    ``services.discard()`` drops what the build prepared."""
    transports = {name: vendor_transport(v) for name, v in config.vendors.items()}
    forwarder = Forwarder(
        services.pool, transports, tokens=services.tokens, deprecations=services.deprecations
    )
    passthrough: dict[str, Handler] = {}
    route_handlers: dict[int, Handler] = {}
    delivery_passthrough: dict[str, Handler] = {}
    delivery_route_handlers: dict[int, Handler] = {}
    for name, vendor in config.vendors.items():
        passthrough[name] = compose(route_stages(config, vendor, None, services), forwarder)
        delivery_passthrough[name] = compose(delivery_stages(config, vendor, None, services), forwarder)
        for route in vendor.routes:
            route_handlers[id(route)] = compose(route_stages(config, vendor, route, services), forwarder)
            if route.delivery != "sync":
                delivery_route_handlers[id(route)] = compose(
                    delivery_stages(config, vendor, route, services), forwarder
                )
    return Runtime(
        config=config,
        passthrough=passthrough,
        route_handlers=route_handlers,
        authenticator=Authenticator(config.clients) if config.clients else None,
        access={name: VendorAccess(config.clients, vendor) for name, vendor in config.vendors.items()}
        if config.clients
        else {},
        delivery_passthrough=delivery_passthrough,
        delivery_route_handlers=delivery_route_handlers,
    )


def commit(runtime: Runtime, services: Services, live: Live | None = None) -> None:
    """Apply what ``runtime`` changes in the shared limiters and breakers, then serve it (on ``live``)."""
    services.commit(frozenset(runtime.config.vendors))
    if live is not None:
        live.runtime = runtime
