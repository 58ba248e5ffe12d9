"""Idempotency across real gateway processes sharing a private redis-server: at most one vendor call
however the duplicates are spread, a crashed owner's key freed by its lease, a dead Redis answered
with 503 rather than a hang."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.gateway_proc import GatewayProcess
from tests.redis_server import RedisServer

ROUTES = {
    "v": """
vendor = "v"
expose = "all"

[[route]]
method = "POST"
path = "/v1/charges"
idempotency = "required"
"""
}


class HeldVendor:
    """Counts calls and holds each answer until ``release`` is set (so duplicates overlap for sure)."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen = asyncio.Event()
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        async def charge(request: web.Request) -> web.Response:
            self.calls += 1
            n = self.calls
            body = await request.read()
            self.seen.set()
            await self.release.wait()
            return web.json_response(
                {"id": f"ch_{n}", "got": body.decode(), "key": request.headers.get("Idempotency-Key")},
                status=201,
            )

        app = web.Application()
        app.router.add_post("/v1/charges", charge)
        return app


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.stop()


async def start_gateways(config: Path, count: int, started: list[GatewayProcess]) -> list[GatewayProcess]:
    gateways = [GatewayProcess(config) for _ in range(count)]
    started.extend(gateways)
    await asyncio.gather(*(asyncio.to_thread(g.wait_ready) for g in gateways))
    return gateways


def config_for(server: Any, redis: RedisServer, lease_seconds: float = 10) -> str:
    return f"""
[gateway]
store = "{redis.url}"

[vendors.v]
base_url = "{server.make_url("/")}"
idempotency = {{ forward_header = "Idempotency-Key", lease_seconds = {lease_seconds} }}
"""


async def charge(
    session: aiohttp.ClientSession, gw: GatewayProcess, key: str
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(
        f"{gw.url}/v/v1/charges", data=b'{"amount":100}', headers={"Idempotency-Key": key}
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.slow
async def test_40_duplicates_over_two_processes_reach_the_vendor_once(
    vendor: Any,
    write_config: Callable[..., Path],
    redis_server: RedisServer,
    processes: list[GatewayProcess],
) -> None:
    held = HeldVendor()
    server = await vendor(held.app())
    a, b = await start_gateways(write_config(config_for(server, redis_server), ROUTES), 2, processes)
    async with aiohttp.ClientSession() as session:
        pending = [asyncio.ensure_future(charge(session, (a, b)[i % 2], "pay-1")) for i in range(40)]
        await asyncio.wait_for(held.seen.wait(), 10)
        await asyncio.sleep(0.5)  # the other 39 reach their gateways while the first is held
        held.release.set()
        results = await asyncio.gather(*pending)
        assert held.calls == 1
        assert Counter(status for status, _, _ in results) == {201: 1, 409: 39}
        original = next(body for status, _, body in results if status == 201)
        assert b'"key": "pay-1"' in original or b'"key":"pay-1"' in original  # forwarded to the vendor

        # After completion each process replays the stored answer, byte for byte.
        for gw in (a, b, a, b):
            status, headers, body = await charge(session, gw, "pay-1")
            assert (status, headers["Idempotent-Replayed"], body) == (201, "true", original)
        assert held.calls == 1

        # A dead Redis: the required route answers 503 problem+json promptly, in both processes.
        redis_server.kill()
        for gw in (a, b):
            started = time.monotonic()
            status, headers, _ = await charge(session, gw, "pay-2")
            assert status == 503 and headers["Content-Type"] == "application/problem+json"
            assert time.monotonic() - started < 3
        assert held.calls == 1


@pytest.mark.slow
async def test_a_crashed_owners_lease_expires_and_the_key_becomes_usable(
    vendor: Any,
    write_config: Callable[..., Path],
    redis_server: RedisServer,
    processes: list[GatewayProcess],
) -> None:
    held = HeldVendor()
    server = await vendor(held.app())
    config = write_config(config_for(server, redis_server, lease_seconds=1), ROUTES)
    a, b = await start_gateways(config, 2, processes)
    async with aiohttp.ClientSession() as session:
        doomed = asyncio.ensure_future(charge(session, a, "pay-1"))
        await asyncio.wait_for(held.seen.wait(), 10)
        a.stop()  # kill -9 while it owns the key and the vendor is working
        with pytest.raises(aiohttp.ClientError):
            await doomed
        crashed_at = time.monotonic()
        status, _, _ = await charge(session, b, "pay-1")
        assert status == 409  # the lease still holds: the vendor may be acting on the first request
        held.release.set()
        while True:
            status, headers, body = await charge(session, b, "pay-1")
            if status != 409:
                break
            assert time.monotonic() - crashed_at < 5, "the crashed owner's lease never expired"
            await asyncio.sleep(0.2)
        assert status == 201 and "Idempotent-Replayed" not in headers
        assert b"ch_2" in body
        assert held.calls == 2
        assert time.monotonic() - crashed_at >= 0.5
