"""A global limit with real processes: two gateway replicas on one private redis-server send the vendor
one limit between them, not one each, and a vendor's Retry-After seen by one holds the other too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_proc import GatewayProcess
from tests.ratelimit_vendor import ARRIVALS, Arrivals, long_run_rate, max_in_window, rate_vendor

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def replica_config(write_config: Callable[..., Path], server: Any, redis_url: str, limit: str) -> Path:
    return write_config(
        f"""
[gateway]
store = "{redis_url}"

[vendors.v]
base_url = "{server.make_url("/")}"
rate_limit = {{ {limit}, scope = "global" }}
"""
    )


async def start(config: Path, n: int = 2) -> list[GatewayProcess]:
    replicas = [GatewayProcess(config) for _ in range(n)]
    try:
        await asyncio.gather(*(asyncio.to_thread(gw.wait_ready) for gw in replicas))
    except BaseException:
        for gw in replicas:
            gw.stop()
        raise
    return replicas


async def test_two_replicas_together_stay_under_one_global_limit(
    vendor: Any, write_config: Callable[..., Path], redis_server: Any
) -> None:
    server = await vendor(rate_vendor())
    config = replica_config(
        write_config,
        server,
        redis_server.url,
        "requests = 20, per_seconds = 1, max_wait_seconds = 1, burst = 5",
    )
    replicas = await start(config)
    try:
        statuses: dict[str, list[int]] = {gw.url: [] for gw in replicas}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(url: str) -> None:
                async with session.get(f"{url}/v/x") as resp:
                    await resp.read()
                    statuses[url].append(resp.status)

            # Each replica is offered twice the limit for 3 seconds: 4x the limit in all.
            tasks = []
            for _ in range(120):
                for gw in replicas:
                    tasks.append(asyncio.ensure_future(one(gw.url)))
                await asyncio.sleep(1 / 40)
            await asyncio.gather(*tasks)
        times = server.app[ARRIVALS].all()
        rate = long_run_rate(times, skip=5)
        per_replica = {url: s.count(200) for url, s in statuses.items()}
        print(
            f"2 replicas, global 20/s, offered 80/s: vendor got {len(times)}, long-run {rate:.2f}/s, "
            f"max in 1s {max_in_window(times)}, per replica {sorted(per_replica.values())}"
        )
        assert 18.0 <= rate <= 22.0  # one limit between them: not 40/s
        assert max_in_window(times) <= 20 + 5
        assert all(count >= 15 for count in per_replica.values())  # both replicas got turns
        assert sum(per_replica.values()) == len(times)
        assert {429, 200} == {s for ss in statuses.values() for s in ss}
    finally:
        for gw in replicas:
            gw.stop()


async def test_a_vendor_pause_seen_by_one_replica_holds_the_other(
    vendor: Any, write_config: Callable[..., Path], redis_server: Any
) -> None:
    server = await vendor(rate_vendor())
    state: Arrivals = server.app[ARRIVALS]
    state.throttle["/limited"] = ["2"]
    config = replica_config(write_config, server, redis_server.url, "requests = 50, max_wait_seconds = 4")
    one, two = await start(config)
    try:
        async with aiohttp.ClientSession() as session:
            first = asyncio.ensure_future(session.get(f"{one.url}/v/limited"))
            await asyncio.wait_for(state.throttled.wait(), 10)
            throttled = state.throttled_at[0]
            await asyncio.sleep(0.1)
            sent = time.monotonic()
            async with session.get(f"{two.url}/v/other") as resp:
                assert resp.status == 200
            resp = await first
            assert resp.status == 200  # sent again by replica one after the pause
            resp.release()
        print(
            f"pause across replicas: other replica held {state.times['/other'][0] - sent:.2f}s after sending"
        )
        assert state.times["/other"][0] - throttled >= 1.9
        assert state.times["/limited"][1] - throttled >= 1.9
    finally:
        one.stop()
        two.stop()
