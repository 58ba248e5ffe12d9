"""Nothing accepted with 202 is lost when a gateway process dies: real gateway processes on a private
redis-server, killed with SIGKILL while they hold deliveries, and a restarted process that finishes
them. The vendor sees one effect per job, thanks to the forwarded idempotency key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_proc import GatewayProcess
from tests.redis_server import RedisServer
from tests.resilience_vendor import RECORDER, Recorder, resilience_vendor

ROUTES = {
    "v": """
vendor = "v"
expose = "all"

[[route]]
method = "POST"
path = "/effects"
delivery = "async"
"""
}


def config_for(server: Any, redis: RedisServer) -> str:
    return f"""
[gateway]
store = "{redis.url}"

[delivery]
claim_after_seconds = 1
max_attempts = 20

[vendors.v]
base_url = "{server.make_url("/")}"
idempotency = {{ forward_header = "Idempotency-Key" }}
retry = {{ base_delay_seconds = 0.05, max_delay_seconds = 0.2 }}
circuit = {{ enabled = false }}
"""


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.stop()


async def start_gateway(config: Path, started: list[GatewayProcess]) -> GatewayProcess:
    gw = GatewayProcess(config)
    started.append(gw)
    await asyncio.to_thread(gw.wait_ready)
    return gw


async def post(session: aiohttp.ClientSession, gw: GatewayProcess, key: str) -> str:
    async with session.post(
        f"{gw.url}/v/effects", data=b'{"amount": 7}', headers={"Idempotency-Key": key}
    ) as resp:
        assert resp.status == 202, await resp.text()
        return str(resp.headers["Location"])


async def wait_delivered(
    session: aiohttp.ClientSession, gw: GatewayProcess, location: str, within: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        async with session.get(gw.url + location) as resp:
            assert resp.status == 200
            record: dict[str, Any] = await resp.json()
        if record["state"] == "delivered":
            return record
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_delivery_held_by_a_killed_process_is_taken_over_and_reaches_the_vendor_once(
    vendor: Any,
    write_config: Callable[..., Path],
    redis_server: RedisServer,
    processes: list[GatewayProcess],
) -> None:
    server = await vendor(resilience_vendor())
    rec: Recorder = server.app[RECORDER]
    rec.hold = asyncio.Event()
    config = write_config(config_for(server, redis_server), ROUTES)
    a = await start_gateway(config, processes)
    async with aiohttp.ClientSession() as session:
        location = await post(session, a, "job-1")
        await asyncio.wait_for(rec.held.wait(), 10)  # a is delivering it, and the vendor is slow
        a.stop()  # SIGKILL while the delivery is in flight
        killed = time.monotonic()
        rec.hold.set()  # the vendor finishes what a sent: the effect happened, a never heard of it
        await asyncio.sleep(0.05)
        assert rec.effects == {"job-1": 1}

        b = await start_gateway(config, processes)  # the restart
        record = await wait_delivered(session, b, location)
        taken_over = time.monotonic() - killed
    assert record["attempts"] >= 1
    assert rec.count("/effects") == 2  # sent again by b, with the same key ...
    assert {c.headers["Idempotency-Key"] for c in rec.calls} == {"job-1"}
    assert rec.effects == {"job-1": 1}  # ... so the vendor acted once
    print(f"taken over and delivered {taken_over:.2f}s after the kill (claim_after_seconds = 1)")


@pytest.mark.slow
async def test_jobs_accepted_before_a_kill_are_delivered_after_a_restart(
    vendor: Any,
    write_config: Callable[..., Path],
    redis_server: RedisServer,
    processes: list[GatewayProcess],
) -> None:
    server = await vendor(resilience_vendor())
    rec: Recorder = server.app[RECORDER]
    rec.down = True  # every attempt fails: the jobs wait in the queue for a retry
    config = write_config(config_for(server, redis_server), ROUTES)
    a = await start_gateway(config, processes)
    async with aiohttp.ClientSession() as session:
        locations = [await post(session, a, f"job-{i}") for i in range(20)]
        a.stop()
        rec.down = False
        b = await start_gateway(config, processes)
        records = [await wait_delivered(session, b, location) for location in locations]
    assert {r["state"] for r in records} == {"delivered"}
    assert rec.effects == {f"job-{i}": 1 for i in range(20)}
