"""``POST /_webhooks/NAME`` (docs/http.md): a vendor's webhook in, an event on the bus out.

In order, each step refusing with problem+json:

1. the webhook exists (404), the method is POST (405), the body fits ``max_body_bytes`` (413);
2. the signature (``verify.py``): 401, logged as ``webhook_rejected`` without the body;
3. where the config needs the body as JSON (a pointer for the id or type, a schema, a transform):
   valid JSON (400), the ``request_schema`` (400 with ``errors``), the id and type present (400);
4. the event id is claimed in the store (``store.py``): published already -> 200 without publishing
   again; being published by another request -> wait for its outcome (bounded by the publish timeout);
   the store down -> 503 (nothing accepted, the vendor retries);
5. ``request_transform``, then the publish, awaited until the bus acknowledged: 503 when it did not
   (the claim is released, so the vendor's retry publishes); else the id is marked published for
   ``dedupe_seconds`` and the vendor gets 200.

A 2xx therefore always means the event is on the bus. Each request gets an access record (with
``webhook``, ``event_id`` once verified, and ``outcome``) and counts in ``gateway_webhooks_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import orjson

from ...bus.base import BusUnavailable, Message
from ...config import Config
from ...config.model import EventField, Webhook
from ...errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    SchemaViolation,
    ServiceUnavailable,
)
from ...messages import Answer, Request, json_answer, problem_answer
from ...observability.logging import milliseconds
from ...services import Services
from ...store import StoreUnavailable
from ...transform import TransformError, apply
from ...transform.pointer import MISSING, resolve
from .store import ClaimResult, WebhookOps
from .verify import verify

WEBHOOK_PREFIX = "/_webhooks/"
MAX_EVENT_ID_CHARS = 1024
IN_FLIGHT_POLL_SECONDS = 0.05  # a duplicate waiting on the request that is publishing looks this often
LEASE_EXTRA_SECONDS = 10.0  # a claim outlives the longest publish by this much


class Outcome:
    published = "published"
    duplicate = "duplicate"
    rejected = "rejected"
    unavailable = "unavailable"


class WebhookReceiver:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.logger = services.logger

    async def __call__(
        self, config: Config, method: str, target: str, request: Request, request_id: str
    ) -> Answer:
        started = time.perf_counter()
        path = target.partition("?")[0]
        name = path[len(WEBHOOK_PREFIX) :]
        webhook = config.webhooks.get(name)
        state: dict[str, Any] = {"event_id": None, "outcome": None, "bytes_in": 0, "publish_ms": 0.0}
        error: str | None = None
        try:
            if webhook is None:
                raise NotFound(f"no webhook named {name[:100]!r}")
            if method != "POST":
                raise MethodNotAllowed(f"{WEBHOOK_PREFIX}{name} answers POST", headers={"Allow": "POST"})
            answer = await self._receive(config, webhook, request, request_id, state)
        except GatewayError as exc:
            error = exc.detail
            if webhook is not None:
                state["outcome"] = Outcome.unavailable if exc.status == 503 else Outcome.rejected
                if exc.status in (400, 401, 413):
                    self.logger.event(
                        "webhook_rejected",
                        level="warning",
                        request_id=request_id,
                        webhook=webhook.name,
                        status=exc.status,
                        reason=exc.detail,
                    )
            answer = problem_answer(exc, request_id)
        except Exception as exc:
            self.logger.exception("unhandled_error", exc, request_id=request_id, webhook=name[:100])
            error = "the gateway failed unexpectedly; the error was logged"
            if webhook is not None:
                state["outcome"] = Outcome.unavailable
            # 503, not 500: the event was not published and the vendor's retry may get through.
            answer = problem_answer(ServiceUnavailable(error), request_id)
        answer.headers.setdefault("X-Request-Id", request_id)
        if webhook is not None and state["outcome"] is not None:
            self.services.webhook_outcomes[(webhook.name, state["outcome"])] += 1
        seconds = time.perf_counter() - started
        self.logger.access(
            request_id=request_id,
            client=None,
            vendor=None,
            route=None,
            method=method,
            path=path if webhook is not None else None,  # an unknown name is not echoed into the logs
            status=answer.status,
            duration_ms=milliseconds(seconds),
            upstream_ms=state["publish_ms"],
            attempts=0,
            bytes_in=state["bytes_in"],
            bytes_out=len(answer.body or b""),
            webhook=webhook.name if webhook is not None else None,
            event_id=state["event_id"],
            outcome=state["outcome"],
            error=error,
        )
        return answer

    async def _receive(
        self, config: Config, webhook: Webhook, request: Request, request_id: str, state: dict[str, Any]
    ) -> Answer:
        body = await request.read_whole(config.gateway.max_body_bytes, "webhook body")
        state["bytes_in"] = len(body)
        verify(webhook.verify, request.headers, body, time.time())
        names = webhook.publish.subject.names
        needs_json = (
            webhook.event_id.kind == "pointer"
            or (webhook.event_type.kind == "pointer" and "type" in names)
            or webhook.request_schema is not None
            or webhook.request_transform is not None
        )
        document: Any = _parse(body) if needs_json else None
        if webhook.request_schema is not None:
            errors = webhook.request_schema.errors(document)
            if errors:
                raise SchemaViolation(
                    f"webhook body fails {webhook.request_schema.name} at {len(errors)} place(s)", errors
                )
        event_id = _field(webhook.event_id, request, document, "id")
        if len(event_id) > MAX_EVENT_ID_CHARS:
            raise BadRequest(f"the event id is longer than {MAX_EVENT_ID_CHARS} characters")
        state["event_id"] = event_id
        values = {"id": event_id, "webhook": webhook.name}
        if "type" in names:
            values["type"] = _field(webhook.event_type, request, document, "type")
        if webhook.request_transform is not None:
            try:
                body = orjson.dumps(apply(webhook.request_transform, document))
            except TransformError as exc:
                raise BadRequest(f"webhook transform failed: {exc}") from None
        message = Message(
            subject=webhook.publish.subject.render(values),
            body=body,
            headers={"Gateway-Webhook": webhook.name, "Gateway-Event-Id": event_id},
            msg_id=event_id,
        )
        outcome = await self._publish_once(config, webhook, message, request_id, state)
        state["outcome"] = outcome
        return json_answer(
            {"status": outcome, "webhook": webhook.name, "event_id": event_id, "subject": message.subject}
        )

    async def _publish_once(
        self, config: Config, webhook: Webhook, message: Message, request_id: str, state: dict[str, Any]
    ) -> str:
        store = self.services.store.webhooks
        timeout = config.bus.publish_timeout_seconds
        owner = f"{request_id}-{os.urandom(4).hex()}"
        event_id = message.msg_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout + 1.0
        while True:
            try:
                claim: ClaimResult = await store.webhook_claim(
                    webhook.name, event_id, owner=owner, lease_seconds=timeout + LEASE_EXTRA_SECONDS
                )
            except StoreUnavailable as exc:
                raise ServiceUnavailable(
                    f"the store that deduplicates webhooks is unavailable: {exc}",
                    headers={"Retry-After": "1"},
                ) from None
            if claim == "published":
                return Outcome.duplicate
            if claim == "claimed":
                break
            # Another request is publishing this event: its outcome is ours (duplicate, or our turn).
            if loop.time() >= deadline:
                raise ServiceUnavailable(
                    "this event is still being published by another request; retry later",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(IN_FLIGHT_POLL_SECONDS)
        started = time.perf_counter()
        try:
            await self.services.bus.publish(webhook.publish, message)
        except BusUnavailable as exc:
            state["publish_ms"] = milliseconds(time.perf_counter() - started)
            await _release_quietly(store, webhook.name, event_id, owner)  # else its lease runs out
            raise ServiceUnavailable(
                f"the event was not published: {exc}", headers={"Retry-After": "1"}
            ) from None
        except BaseException:
            # Cancelled (shutdown) or failed mid-publish: the claim must not hold the vendor's retry.
            await asyncio.shield(_release_quietly(store, webhook.name, event_id, owner))
            raise
        state["publish_ms"] = milliseconds(time.perf_counter() - started)
        try:
            await store.webhook_published(webhook.name, event_id, keep_seconds=webhook.dedupe_seconds)
        except StoreUnavailable as exc:
            # The event is on the bus, so the vendor hears 2xx; a retry within the lease is still a
            # duplicate, a later one may publish again (JetStream's Nats-Msg-Id window drops it there).
            self.logger.event(
                "webhook_dedupe_not_stored",
                level="warning",
                request_id=request_id,
                webhook=webhook.name,
                event_id=event_id,
                error=str(exc),
            )
        return Outcome.published


async def _release_quietly(store: WebhookOps, webhook: str, event_id: str, owner: str) -> None:
    with contextlib.suppress(StoreUnavailable):
        await store.webhook_release(webhook, event_id, owner=owner)


def _parse(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("this webhook needs a JSON body, and the request has none")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"webhook body is not valid JSON: {exc}") from None


def _field(where: EventField, request: Request, document: Any, what: str) -> str:
    """The event's id or type from its header or pointer; 400 when it is missing or not a scalar."""
    if where.kind == "header":
        value = request.headers.get(where.name)
        if not value:
            raise BadRequest(f"the event has no {what}: no {where.name} header")
        return value
    found = resolve(document, where.tokens)
    if found is MISSING or found is None or found == "":
        raise BadRequest(f"the event has no {what} at {where.name}")
    if isinstance(found, bool) or not isinstance(found, str | int):
        raise BadRequest(f"the event's {what} at {where.name} must be a string or an integer")
    return str(found)
