"""TokenManager timing with a fake clock and a real local token endpoint: refresh ahead of expiry,
expiry, discard rules and failure back-off."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from gateway.config import OAuth2ClientCredentials, Secret
from gateway.errors import BadGateway
from gateway.observability.logging import Logger
from gateway.upstream.credentials import TokenManager, TokenSource
from gateway.upstream.forwarder import endpoint_of
from gateway.upstream.pool import Pool, Timeouts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Endpoint:
    def __init__(self) -> None:
        self.issued = 0
        self.fail = False
        self.expires_in = 100

    async def token(self, request: web.Request) -> web.Response:
        if self.fail:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        self.issued += 1
        return web.json_response({"access_token": f"t{self.issued}", "expires_in": self.expires_in})


@pytest.fixture
async def setup(aiohttp_server: Any) -> Any:
    endpoint = Endpoint()
    app = web.Application()
    app.router.add_post("/token", endpoint.token)
    server = await aiohttp_server(app)
    clock = Clock()
    logs = io.BytesIO()
    pool = Pool()  # the transport: token calls go through it as vendor calls do
    manager = TokenManager(pool, Logger(stream=logs), clock=clock)
    token_url = URL(str(server.make_url("/token")))
    auth = OAuth2ClientCredentials(
        token_url=token_url,
        client_id=Secret("env:X", "id"),
        client_secret=Secret("env:Y", "secret-value-123"),
    )
    source = TokenSource(
        vendor="v",
        auth=auth,
        endpoint=endpoint_of(token_url, True),
        target=token_url.raw_path_qs,
        timeout=Timeouts(total=5, connect=5, read_idle=5),
    )
    yield endpoint, clock, manager, source, logs
    await manager.close()
    await pool.close()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_token_is_reused_until_the_refresh_margin(setup: Any) -> None:
    endpoint, clock, manager, source, _ = setup
    first = await manager.get(source)
    assert first.value == "t1" and first.header == "Bearer t1"
    assert "t1" not in repr(first)
    clock.now += 89  # lifetime 100 s, margin 10 s: still fresh
    assert await manager.get(source) is first
    await settle()
    assert endpoint.issued == 1


async def test_inside_the_margin_the_old_token_serves_while_one_refresh_runs(setup: Any) -> None:
    endpoint, clock, manager, source, _ = setup
    first = await manager.get(source)
    clock.now += 91
    results = [await manager.get(source) for _ in range(5)]
    assert all(token is first for token in results)  # nobody waited for the refresh
    await settle()
    assert endpoint.issued == 2  # one background refresh for the five
    assert (await manager.get(source)).value == "t2"


async def test_an_expired_token_is_never_sent(setup: Any) -> None:
    _endpoint, clock, manager, source, _ = setup
    await manager.get(source)
    clock.now += 98.5  # within the last 2% of its life
    assert (await manager.get(source)).value == "t2"


async def test_discard_only_drops_the_current_token(setup: Any) -> None:
    endpoint, _clock, manager, source, _ = setup
    old = await manager.get(source)
    manager.discard(source, old)
    new = await manager.get(source)
    assert new.value == "t2"
    manager.discard(source, old)  # a late 401 for the old token must not cost the new one
    assert await manager.get(source) is new
    assert endpoint.issued == 2


async def test_a_failed_refresh_keeps_the_old_token_and_backs_off(setup: Any) -> None:
    endpoint, clock, manager, source, logs = setup
    first = await manager.get(source)
    endpoint.fail = True
    clock.now += 91
    assert await manager.get(source) is first
    await settle()
    assert b"oauth2_token_failed" in logs.getvalue() and b"503" in logs.getvalue()
    attempts = logs.getvalue().count(b"oauth2_token_failed")
    clock.now += 1
    assert await manager.get(source) is first
    await settle()
    assert logs.getvalue().count(b"oauth2_token_failed") == attempts  # backing off, no new fetch
    endpoint.fail = False
    clock.now += 5
    await manager.get(source)
    await settle()
    assert (await manager.get(source)).value == "t2"


async def test_without_a_usable_token_failures_raise_bad_gateway(setup: Any) -> None:
    endpoint, _clock, manager, source, logs = setup
    endpoint.fail = True
    with pytest.raises(BadGateway) as info:
        await manager.get(source)
    assert "503 (temporarily_unavailable)" in info.value.detail
    assert b"secret-value-123" not in logs.getvalue()
    endpoint.fail = False
    assert (await manager.get(source)).value == "t1"  # the next request tries again at once


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_fetch(setup: Any) -> None:
    endpoint, _clock, manager, source, _ = setup
    waiter = asyncio.ensure_future(manager.get(source))
    other = asyncio.ensure_future(manager.get(source))
    await asyncio.sleep(0)
    waiter.cancel()
    assert (await other).value == "t1"
    assert endpoint.issued == 1
