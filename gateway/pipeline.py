"""The stage contract and how stages compose.

A stage is ``async def __call__(self, exchange, call_next) -> Answer`` (or a plain function handing
back an awaitable, see ``Stage``). It may act before and after ``call_next``, or short-circuit by raising
a ``GatewayError`` or by not calling it.
Pipelines are built once per route at startup; list order is execution order.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from multidict import CIMultiDict

from .config import Route, Vendor
from .messages import Answer, Request

Handler = Callable[["Exchange"], Awaitable[Answer]]


@dataclass(slots=True, eq=False)
class Exchange:
    """Per-request state shared by the stages: one object, typed fields, no string-keyed bags."""

    request: Request  # the caller's (or a queued delivery's): method, fields and body as sent
    request_id: str
    vendor: Vendor
    route: Route | None
    method: str
    path: str  # raw vendor path as sent by the caller (validated by gateway.target)
    query: str | None  # raw query string, forwarded byte-for-byte; None: no "?" ("" for a bare one)
    headers: CIMultiDict[str]  # what will be sent to the vendor (hop-by-hop etc. already removed)
    client: str | None = None  # the [clients] name that called, once client auth has run
    segments: tuple[str, ...] = ()  # the vendor path's decoded segments, as routes and allow rules match
    # The request body, once a stage needed it whole; None means it is streamed from the caller.
    body: bytes | None = None
    json: Any = None  # parsed body, shared between stages (parsed once)
    # > 0 when a stage needs the vendor's response body whole (schema, transform): the forwarder then
    # reads it up to this many bytes and answers 502 past that, instead of streaming it.
    buffer_response_bytes: int = 0
    # > 0 when a stage would like the response body whole but can do without it (idempotency keeps
    # answers for replay): bodies up to this many bytes come back whole, larger ones stream.
    capture_response_bytes: int = 0
    # The caller's Idempotency-Key once the idempotency stage accepted it (and forwarded it, if the vendor
    # has a forward_header): a retried POST is safe at the vendor only then.
    idempotency_key: str | None = None
    idempotency_forwarded: bool = False
    # Set by the retry stage: answers with these statuses come back whole (bodies
    # up to upstream.RETRY_RESPONSE_BYTES) so the stage can still drop them and try again.
    retry_statuses: frozenset[int] = frozenset()
    # time.perf_counter() by which every attempt must be over (the vendor's total timeout, counted from
    # the first attempt); the forwarder cuts each attempt's timeout to what is left. None: no deadline.
    deadline: float | None = None
    # No caller connection (a delivery worker): every answer comes back whole,
    # bodiless or not; past capture_response_bytes the rest of the body is dropped.
    detached: bool = False
    started: float = field(default_factory=time.perf_counter)
    upstream_seconds: float = 0.0
    attempts: int = 0
    # The kind of fault the fault stage injected ("abort", "delay", "reset"; the last one), for the
    # access record. None: none was.
    fault: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0

    async def read_body(self) -> bytes:
        """The caller's body, read once (bounded by the vendor's max_body_bytes) and kept for later stages."""
        if self.body is None:
            request = self.request
            if not request.has_body:
                return b""
            self.body = await request.read_whole(self.vendor.max_body_bytes)
            self.bytes_in = len(self.body)
        return self.body


class Stage(Protocol):
    """A step of a route's pipeline. A stage that only acts on some methods may say which in a
    ``methods`` attribute (a frozenset, or None for all): ``compose`` then passes other requests
    straight on, without entering the stage at all. A stage with nothing to do after ``call_next``
    may be a plain function handing back ``call_next(exchange)``, raising a refusal as it is called."""

    def __call__(self, exchange: Exchange, call_next: Handler, /) -> Awaitable[Answer]: ...


def compose(stages: Sequence[Stage], endpoint: Handler) -> Handler:
    """Wrap ``endpoint`` so that ``stages[0]`` runs first; no stages means the endpoint itself."""
    handler = endpoint
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


class _Bound:
    """``stage`` with its ``call_next``. Not a coroutine function: calling it returns the stage's own
    coroutine, so a stage costs no extra coroutine frame per request."""

    __slots__ = ("call_next", "methods", "stage")

    def __init__(self, stage: Stage, call_next: Handler) -> None:
        self.stage = stage
        self.call_next = call_next
        self.methods: frozenset[str] | None = getattr(stage, "methods", None)

    def __call__(self, exchange: Exchange) -> Awaitable[Answer]:
        if self.methods is not None and exchange.method not in self.methods:
            return self.call_next(exchange)
        return self.stage(exchange, self.call_next)

    def __repr__(self) -> str:
        return f"<{type(self.stage).__name__} then {self.call_next!r}>"


def _bind(stage: Stage, call_next: Handler) -> Handler:
    return _Bound(stage, call_next)
