"""Graceful shutdown with a real process: stop accepting, let in-flight requests finish, exit 0."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.gateway_proc import GatewayProcess


def slow_vendor(seconds: float) -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    return app


@pytest.mark.slow
async def test_sigterm_drains_in_flight_requests_then_exits_0(
    vendor: Any, write_config: Callable[..., Path]
) -> None:
    server = await vendor(slow_vendor(1.5))
    config = write_config(f'[vendors.v]\nbase_url = "{server.make_url("/")}"\n')
    gw = GatewayProcess(config)
    try:
        await asyncio.to_thread(gw.wait_ready)
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"{gw.url}/v/slow"))
            await asyncio.sleep(0.4)
            gw.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # No longer accepting: a new connection is refused while the old request still runs.
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as fresh:
                    await fresh.get(f"{gw.url}/_gateway/health")
            resp = await in_flight
            assert resp.status == 200
            assert await resp.text() == "finished"
        code = await asyncio.to_thread(gw.proc.wait, 10)
        assert code == 0, gw.output()
        assert '"event":"stopped"' in gw.output()
    finally:
        gw.stop()


@pytest.mark.slow
async def test_drain_is_bounded_by_shutdown_timeout(vendor: Any, write_config: Callable[..., Path]) -> None:
    server = await vendor(slow_vendor(30))
    config = write_config(
        f'[gateway]\nshutdown_timeout_seconds = 0.5\n[vendors.v]\nbase_url = "{server.make_url("/")}"\n'
    )
    gw = GatewayProcess(config)
    try:
        await asyncio.to_thread(gw.wait_ready)
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"{gw.url}/v/slow"))
            await asyncio.sleep(0.4)
            loop = asyncio.get_running_loop()
            started = loop.time()
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gw.proc.wait, 15)
            assert code == 0, gw.output()
            assert loop.time() - started < 5
            with pytest.raises(aiohttp.ClientError):
                resp = await in_flight
                await resp.read()
    finally:
        gw.stop()


SHUTDOWN_SECONDS = 2.0


def holding_vendor(arrived: list[str]) -> web.Application:
    """Answers nothing within any drain: each call is recorded as it arrives, then held."""

    async def hold(request: web.Request) -> web.Response:
        arrived.append(f"{request.method} {request.path}")
        await asyncio.sleep(60)
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hold)
    return app


@pytest.mark.slow
async def test_requests_and_deliveries_outliving_the_drain_share_one_shutdown_timeout(
    vendor: Any, write_config: Callable[..., Path]
) -> None:
    arrived: list[str] = []
    server = await vendor(holding_vendor(arrived))
    config = write_config(
        f"""
        [gateway]
        shutdown_timeout_seconds = {SHUTDOWN_SECONDS}
        [vendors.v]
        base_url = "{server.make_url("/")}"
        timeout = {{ connect_seconds = 2, total_seconds = 60 }}
        retry = {{ attempts = 1 }}
        """,
        routes={
            "v": 'vendor = "v"\nexpose = "all"\n[[route]]\nmethod = "POST"\npath = "/job"\ndelivery = "async"\n'
        },
    )
    gw = GatewayProcess(config)
    try:
        await asyncio.to_thread(gw.wait_ready)
        async with aiohttp.ClientSession() as session:
            accepted = await session.post(f"{gw.url}/v/job", data=b"{}")
            assert accepted.status == 202
            in_flight = asyncio.ensure_future(session.get(f"{gw.url}/v/slow"))
            # Both are with the vendor (a delivery in progress, a caller waiting) before the signal.
            waited = time.monotonic() + 20
            while sorted(arrived) != ["GET /slow", "POST /job"]:
                assert time.monotonic() < waited, arrived
                await asyncio.sleep(0.02)
            started = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gw.proc.wait, 20)
            elapsed = time.monotonic() - started
            print(f"shutdown_timeout_seconds={SHUTDOWN_SECONDS}: exited after {elapsed:.3f} s")
            assert code == 0, gw.output()
            with pytest.raises(aiohttp.ClientError):
                resp = await in_flight
                await resp.read()
        # In flight work gets the whole drain, and the drain is spent once: the request and the
        # delivery wait together, and nothing waits a second time after them (that would take two
        # timeouts). The slack below that is for closing up and the interpreter's exit on a busy machine.
        assert elapsed >= SHUTDOWN_SECONDS - 0.05, gw.output()
        assert elapsed < SHUTDOWN_SECONDS * 1.9, gw.output()
        output = gw.output()
        assert '"event":"stopped"' in output
        access = [line for line in output.splitlines() if '"event":"access"' in line and "/v/slow" in line]
        assert len(access) == 1 and '"status":499' in access[0], output
    finally:
        gw.stop()
