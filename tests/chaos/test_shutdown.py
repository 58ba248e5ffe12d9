"""Graceful shutdown with a real process: stop accepting, let in-flight requests finish, exit 0."""

from __future__ import annotations

import asyncio
import signal
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
