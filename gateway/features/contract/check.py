"""``gateway contract check``: each route's examples sent through the pipeline to the vendor, and the
vendor's answers judged against the route's response schema (docs/operations.md).

The examples go through the route's own pipeline (idempotency, request schema and transform, retries,
the breaker, rate limits, credentials, the pinned version) built from the config as given, with four
changes that make a check a check: no client auth (the operator runs it, not a caller); faults off (an
injected failure is not the vendor's drift); async routes sent synchronously (the check needs the
answer); and the response stage left out, since the check judges the vendor's answer itself, before the
response transform, and reports every schema error instead of one 502. It runs in its own process
state (the memory store), so it never shares breakers, limits or idempotency records with gateways in
service.

An example passes when the vendor answers 2xx with JSON that fits the route's response schema and
that the route's response transform can apply to (a route with neither passes on any 2xx). Examples
that are not safe to repeat (POST or PATCH without an idempotency key the vendor gets, under its
``idempotency.forward_header``) are skipped unless ``allow_writes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from ...config import IDEMPOTENCY_DEFAULT_METHODS, Config, Route, TracingSettings, Vendor
from ...errors import GatewayError
from ...http.app import Gateway
from ...messages import Answer, Request
from ...observability.logging import Logger, new_request_id
from ...pipeline import Exchange
from ...target import parse_target
from ...transform import TransformError, apply
from ...upstream.forwarder import request_headers
from ..payload.stage import MAX_RESPONSE_BYTES
from ..retry.policy import IDEMPOTENT_METHODS
from .examples import Example

ROOT = "(root)"  # how the empty JSON Pointer (the whole answer) is printed
SNIPPET_BYTES = 200  # of a non-2xx answer's body, in its FAIL line

Problems = tuple[tuple[str | None, str], ...]  # (JSON Pointer into the answer, or None; message)


@dataclass(frozen=True, slots=True)
class Answered:
    """What came back for one example: the vendor's answer, or the gateway's own error."""

    status: int
    content_type: str
    body: bytes
    gateway_error: str | None = None  # the gateway's problem detail when it answered itself


@dataclass(frozen=True, slots=True)
class Verdict:
    vendor: str
    route: str  # the route's path, as in metrics and access records
    example: str
    outcome: Literal["PASS", "FAIL", "SKIP"]
    problems: Problems = ()

    def lines(self) -> list[str]:
        head = f"{self.outcome} {self.vendor} {self.route} {self.example}"
        if not self.problems:
            return [head]
        return [
            f"{head}: {message}" if at is None else f"{head}: {at}: {message}"
            for at, message in self.problems
        ]


def examples_of(config: Config, vendor: str | None = None) -> Iterator[tuple[Vendor, int, Route, Example]]:
    """(vendor, route index, route, example) for every example, in config order."""
    for v in config.vendors.values():
        if vendor is not None and v.name != vendor:
            continue
        for index, route in enumerate(v.routes):
            for example in route.examples:
                yield v, index, route, example


def safe_to_send(vendor: Vendor, route: Route, example: Example) -> bool:
    """As the retry policy says what is safe to send twice: idempotent methods, and POST or PATCH whose
    idempotency key reaches the vendor under its forward_header."""
    if example.method in IDEMPOTENT_METHODS:
        return True
    mode = route.idempotency or ("optional" if example.method in IDEMPOTENCY_DEFAULT_METHODS else "off")
    return (
        mode != "off"
        and vendor.idempotency.forward_header is not None
        and example.header("Idempotency-Key") is not None
    )


def judge(route: Route, answered: Answered) -> Problems:
    """Every way the answer breaks the route's contract; () when it keeps it."""
    if answered.gateway_error is not None:
        return ((None, f"the gateway answered {answered.status}: {answered.gateway_error}"),)
    if not 200 <= answered.status < 300:
        snippet = answered.body[:SNIPPET_BYTES].decode("utf-8", "replace").replace("\n", " ")
        return ((None, f"the vendor answered {answered.status}, not 2xx: {snippet}"),)
    if route.response_schema is None and route.response_transform is None:
        return ()
    try:
        document = orjson.loads(answered.body)
    except orjson.JSONDecodeError as exc:
        return ((None, f"the vendor's answer is not JSON: {exc}"),)
    if route.response_schema is not None:
        errors = route.response_schema.errors(document)
        if errors:
            return tuple((error["path"] or ROOT, error["message"]) for error in errors)
    if route.response_transform is not None:
        try:
            apply(route.response_transform, document)
        except TransformError as exc:
            return ((None, f"the response transform cannot apply: {exc}"),)
    return ()


def for_check(config: Config) -> Config:
    """The config the check's pipelines are built from (see the module docstring). Routes keep their
    order, so route ``i`` of a vendor here is route ``i`` of the config as given."""
    vendors = {
        name: dataclasses.replace(
            vendor,
            faults=None,
            routes=tuple(
                dataclasses.replace(
                    route, response_schema=None, response_transform=None, faults=None, delivery="sync"
                )
                for route in vendor.routes
            ),
        )
        for name, vendor in config.vendors.items()
    }
    return dataclasses.replace(
        config,
        vendors=vendors,
        clients={},
        tracing=TracingSettings(),
        gateway=dataclasses.replace(config.gateway, store="memory://"),
        warnings=(),
    )


class Checker:
    """Sends examples through one gateway built for checking; ``close()`` when done."""

    def __init__(self, config: Config, logger: Logger) -> None:
        self.config = config
        self.gateway = Gateway(for_check(config), logger=logger)

    async def close(self) -> None:
        await self.gateway.close()

    async def send(self, vendor: Vendor, index: int, example: Example) -> Answered:
        runtime = self.gateway.live.runtime
        request_id = new_request_id()
        fields = CIMultiDictProxy(CIMultiDict(example.headers))
        try:
            target = parse_target(f"/{vendor.name}{example.target}")
            resolved = runtime.resolve(example.method, target, fields)
            if resolved.route is not runtime.config.vendors[vendor.name].routes[index]:
                # The loader checked this; a path_prefix version taken off could still change it.
                raise GatewayError(f"{example.method} {example.path} does not reach the route that lists it")
            body = example.body
            ex = Exchange(
                request=Request(
                    method=example.method,
                    headers=fields,
                    content_length=len(body) if body is not None else None,
                    body=body,
                ),
                request_id=request_id,
                vendor=resolved.vendor,
                route=resolved.route,
                method=example.method,
                path=resolved.target.path,
                query=resolved.target.query,
                segments=resolved.target.segments,
                headers=request_headers(fields, request_id),
            )
            # As the response stage would: the answer whole and unencoded, for the check to read.
            ex.buffer_response_bytes = MAX_RESPONSE_BYTES
            ex.headers.popall(hdrs.ACCEPT_ENCODING, None)
            answer = await resolved.handler(ex)
        except GatewayError as exc:
            return Answered(status=exc.status, content_type="", body=b"", gateway_error=exc.detail)
        return Answered(
            status=answer.status,
            content_type=answer.headers.get(hdrs.CONTENT_TYPE, ""),
            body=await _read(answer),
        )


async def _read(answer: Answer) -> bytes:
    if answer.body is not None:
        return answer.body
    if answer.stream is None:
        return b""
    try:
        return b"".join([chunk async for chunk in _bounded(answer.stream)])
    finally:
        answer.discard()


async def _bounded(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise GatewayError(f"the vendor answered more than {MAX_RESPONSE_BYTES} bytes")
        yield chunk


async def run_check(
    config: Config,
    *,
    vendor: str | None = None,
    allow_writes: bool = False,
    logger: Logger,
    emit: Callable[[Verdict], None],
    keep: Callable[[Vendor, Route, Example, Answered], Any] | None = None,
) -> list[Verdict]:
    """Check every example (of ``vendor``), calling ``emit`` with each verdict as it is reached and
    ``keep`` with each answer the vendor gave (``--record``)."""
    verdicts: list[Verdict] = []
    checker = Checker(config, logger)
    try:
        for v, index, route, example in examples_of(config, vendor):
            if not allow_writes and not safe_to_send(v, route, example):
                why = (
                    f"{example.method} without an idempotency key the vendor gets (idempotency."
                    "forward_header) is not safe to repeat; --allow-writes sends it"
                )
                verdict = Verdict(v.name, route.path, example.name, "SKIP", ((None, why),))
            else:
                answered = await checker.send(v, index, example)
                if keep is not None and answered.gateway_error is None:
                    keep(v, route, example, answered)
                problems = judge(route, answered)
                verdict = Verdict(v.name, route.path, example.name, "FAIL" if problems else "PASS", problems)
            verdicts.append(verdict)
            emit(verdict)
    finally:
        await checker.close()
    return verdicts
