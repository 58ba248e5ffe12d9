"""Each stage alone, with a fake ``call_next`` standing in for the rest of the pipeline and the
gateway's own Request and Answer types: no HTTP server, no vendor. (The e2e tests run the stages
together against real vendors; this tier pins what each one decides.)"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import Config, Vendor, load_config
from gateway.errors import CircuitOpen, ClientClosedRequest, GatewayError, VendorUnreachable
from gateway.features.circuit.stage import circuit_stage
from gateway.features.ratelimit.stage import ratelimit_stage
from gateway.features.retry.stage import retry_stage
from gateway.messages import Answer, Request
from gateway.observability.logging import Logger
from gateway.pipeline import Exchange
from gateway.services import Services


def setup(write_config: Callable[..., Path], extra: str) -> tuple[Config, Vendor, Services]:
    config = load_config(write_config(f'[vendors.v]\nbase_url = "http://127.0.0.1:1"\n{extra}\n'))
    return config, config.vendors["v"], Services(logger=Logger(stream=io.BytesIO()))


def exchange(vendor: Vendor, method: str = "GET") -> Exchange:
    return Exchange(
        request=Request(method=method, headers=CIMultiDictProxy(CIMultiDict())),
        request_id="r",
        vendor=vendor,
        route=None,
        method=method,
        path="/x",
        query="",
        headers=CIMultiDict(),
    )


class Vendorless:
    """A fake call_next: plays the given outcomes in turn, counting attempts as the forwarder does."""

    def __init__(self, *outcomes: Answer | GatewayError) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self, ex: Exchange) -> Answer:
        self.calls += 1
        ex.attempts += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome


async def chunks() -> AsyncIterator[bytes]:
    yield b"streamed"


RETRY = "retry = { attempts = 3, base_delay_seconds = 0.001, max_delay_seconds = 0.001 }"


async def test_retry_tries_a_whole_503_again_until_an_answer_is_final(
    write_config: Callable[..., Path],
) -> None:
    _, vendor, services = setup(write_config, RETRY)
    stage = retry_stage(vendor, services)
    assert stage is not None
    fake = Vendorless(
        Answer(status=503, body=b"busy"), VendorUnreachable("reset"), Answer(status=200, body=b"ok")
    )
    answer = await stage(exchange(vendor), fake)
    assert (answer.status, answer.body, fake.calls) == (200, b"ok", 3)
    assert services.retries.sent == {("v", "503"): 1, ("v", "connection"): 1}


async def test_retry_never_repeats_a_streamed_answer_nor_a_callers_fault(
    write_config: Callable[..., Path],
) -> None:
    _, vendor, services = setup(write_config, RETRY)
    stage = retry_stage(vendor, services)
    assert stage is not None
    streamed = Answer(status=503, stream=chunks())
    fake = Vendorless(streamed)
    assert await stage(exchange(vendor), fake) is streamed and fake.calls == 1  # bytes already flow
    fake = Vendorless(ClientClosedRequest("gone"))
    with pytest.raises(ClientClosedRequest):
        await stage(exchange(vendor), fake)
    assert fake.calls == 1


async def test_retry_leaves_a_post_without_a_forwarded_key_alone(write_config: Callable[..., Path]) -> None:
    _, vendor, services = setup(write_config, RETRY)
    stage = retry_stage(vendor, services)
    assert stage is not None
    fake = Vendorless(Answer(status=503, body=b"busy"))
    assert (await stage(exchange(vendor, "POST"), fake)).status == 503
    assert fake.calls == 1


CIRCUIT = "circuit = { failure_ratio = 0.5, min_requests = 5, window_seconds = 60, open_seconds = 60 }"


async def test_the_breaker_opens_on_vendor_faults_only(write_config: Callable[..., Path]) -> None:
    _, vendor, services = setup(write_config, CIRCUIT)
    stage = circuit_stage(vendor, services)
    assert stage is not None
    for _ in range(10):  # callers leaving say nothing about the vendor
        with pytest.raises(ClientClosedRequest):
            await stage(exchange(vendor), Vendorless(ClientClosedRequest("gone")))
    assert (await stage(exchange(vendor), Vendorless(Answer(status=200, body=b"")))).status == 200
    seen = []
    for _ in range(10):
        try:
            await stage(exchange(vendor), Vendorless(VendorUnreachable("refused")))
        except CircuitOpen:
            seen.append("open")
            break
        except VendorUnreachable:
            seen.append("failed")
    # 1 success and the failures: it opens once 5 calls were made and half of them failed.
    assert seen == ["failed"] * 4 + ["open"]
    fake = Vendorless(Answer(status=200, body=b""))
    with pytest.raises(CircuitOpen):
        await stage(exchange(vendor), fake)
    assert fake.calls == 0  # open: the vendor is not called
    services.circuits.close()


async def test_a_streamed_answer_holds_its_concurrency_slot_until_it_is_done(
    write_config: Callable[..., Path],
) -> None:
    config, vendor, services = setup(write_config, "concurrency = 1")
    stage = ratelimit_stage(config, vendor, None, services)
    assert stage is not None
    limiter = services.ratelimits.vendor(vendor)
    released = []
    streamed = Answer(status=200, stream=chunks(), release=lambda: released.append(True))
    answer = await stage(exchange(vendor), Vendorless(streamed))
    assert limiter.in_flight == 1  # the vendor is still sending: the slot is held
    answer.discard()
    assert (limiter.in_flight, released) == (0, [True])
    whole = await stage(exchange(vendor), Vendorless(Answer(status=200, body=b"ok")))
    assert whole.body == b"ok" and limiter.in_flight == 0
    services.ratelimits.close()


async def test_compose_passes_methods_a_stage_does_not_take_straight_on(
    write_config: Callable[..., Path],
) -> None:
    from gateway.pipeline import compose

    _, vendor, _ = setup(write_config, "")
    entered: list[str] = []

    class PostOnly:
        methods = frozenset({"POST"})

        async def __call__(self, ex: Exchange, call_next: Any) -> Answer:
            entered.append(ex.method)
            answer: Answer = await call_next(ex)
            return answer

    endpoint = Vendorless(Answer(status=200), Answer(status=201))
    handler = compose([PostOnly()], endpoint)
    assert (await handler(exchange(vendor, "GET"))).status == 200
    assert (await handler(exchange(vendor, "POST"))).status == 201
    assert entered == ["POST"] and endpoint.calls == 2
