"""Alerts end to end (docs/operations.md): the sandbox's flaky endpoint through the gateway fires an
error-ratio alert, a real local webhook gets the firing and the resolved notice, the metric flips 1
then 0, and ``/_gateway/alerts`` lists it while it fires. The monitor runs on a ManualClock, moved one
second per tick, so the window and ``for_seconds`` are exact however loaded the machine is; traffic,
sockets and the webhook are real. Then the webhook misbehaving (down, slow, failing) never slows a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import load_config
from gateway.http.app import reload
from gateway.observability.logging import Logger
from gateway.observability.notifier import MAX_QUEUE
from gateway.sandbox import create_app as sandbox_app
from tests.conftest import CapturedLogs
from tests.gateway_client import GatewayClient
from tests.manual_clock import ManualClock, until
from tests.monitor_clock import start_gateway, tick


class Webhook:
    """A real local HTTP server standing in for an alert receiver: records each POST, answers as told."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.tries = 0
        self.fail_first = 0  # answer 503 to this many tries first
        self.hold = asyncio.Event()  # with ``stuck``, tries wait on this (never set: a hung receiver)
        self.stuck = False
        self.arrived = asyncio.Event()

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.tries += 1
            body = await request.read()
            assert request.headers["Content-Type"] == "application/json"
            self.arrived.set()
            if self.stuck:
                await self.hold.wait()
            if self.tries <= self.fail_first:
                return web.Response(status=503)
            self.received.append(orjson.loads(body))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hooks/gateway/s3cr3t-token", hook)
        return app


Start = Callable[..., Awaitable[tuple[GatewayClient, ManualClock, Webhook]]]


def alert_config(sandbox: TestServer, webhook_url: str, extra: str = "") -> str:
    return f"""
[vendors.sandbox]
base_url = "{sandbox.make_url("/")}"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}

[alerts]
webhook_url = "{webhook_url}"
evaluate_seconds = 5
{extra}

[[alerts.rule]]
name = "sandbox-errors"
vendor = "sandbox"
kind = "error_ratio"
threshold = 0.2
window_seconds = 60
for_seconds = 10
min_requests = 20
"""


async def start_all(
    vendor: Callable[[web.Application], Awaitable[TestServer]],
    write_config: Callable[..., Any],
    logs: CapturedLogs,
    started: list[GatewayClient],
    *,
    webhook_url: str | None = None,
    extra: str = "",
) -> tuple[GatewayClient, ManualClock, Webhook]:
    sandbox = await vendor(sandbox_app())
    hook = Webhook()
    receiver = await vendor(hook.app())
    url = webhook_url or str(receiver.make_url("/hooks/gateway/s3cr3t-token"))
    clock = ManualClock()
    config = load_config(write_config(alert_config(sandbox, url, extra)))
    client = await start_gateway(config, Logger(stream=logs), clock)
    started.append(client)
    return client, clock, hook


async def test_a_flaky_vendor_fires_an_error_ratio_alert_then_resolves(
    vendor: Any, write_config: Any, logs: CapturedLogs
) -> None:
    started: list[GatewayClient] = []
    try:
        client, clock, hook = await start_all(vendor, write_config, logs, started)
        metric = 'gateway_alert_active{alert="sandbox-errors",vendor="sandbox"}'

        async def active() -> str:
            text = await (await client.get("/_gateway/metrics")).text()
            return next(line.split()[-1] for line in text.splitlines() if line.startswith(metric))

        assert await active() == "0.0"  # the series exists before anything failed
        start = clock.now()
        fired_at = None
        statuses: list[int] = []
        for _ in range(40):  # 40 s of 9 calls a second to /v1/flaky: every third one is a 503
            for _ in range(9):
                async with client.get("/sandbox/v1/flaky?key=k") as resp:
                    statuses.append(resp.status)
            await tick(client, clock)
            if fired_at is None and client.app.services.alerts.firing():
                fired_at = clock.now()
        assert statuses.count(503) == len(statuses) // 3
        # Holds from the first evaluation with 20 answers (t+5: 45 of them), fires once it has held
        # for_seconds = 10, at the evaluation of t+15: well within the 60 s window.
        assert fired_at is not None and fired_at - start == 15
        await until(lambda: len(hook.received) == 1, "the webhook's firing notice")
        firing = hook.received[0]
        assert firing["status"] == "firing" and firing["alert"] == "sandbox-errors"
        assert firing["vendor"] == "sandbox" and firing["kind"] == "error_ratio"
        assert firing["threshold"] == 0.2 and abs(firing["value"] - 1 / 3) < 0.01
        assert firing["since"].endswith("Z") and firing["gateway"]
        assert await active() == "1.0"
        listed = orjson.loads(await (await client.get("/_gateway/alerts")).read())
        assert [a["alert"] for a in listed["alerts"]] == ["sandbox-errors"]

        resolved_at = None
        for _ in range(60):  # the vendor recovers: only good answers, 9 a second
            for _ in range(9):
                async with client.get("/sandbox/v1/customers?limit=1") as resp:
                    assert resp.status == 200
            await tick(client, clock)
            if resolved_at is None and not client.app.services.alerts.firing():
                resolved_at = clock.now()
        # k s into the recovery the minute's window holds 60 - k of the failing seconds (3 errors each)
        # among 540 answers: 3 (60 - k) / 540 is at most 0.2 from k = 24, and the first evaluation
        # (every 5 s) from then is at k = 25.
        assert resolved_at is not None and resolved_at - start - 40 == 25
        await until(lambda: len(hook.received) == 2, "the webhook's resolved notice")
        resolved = hook.received[1]
        assert resolved["status"] == "resolved" and resolved["alert"] == "sandbox-errors"
        assert resolved["value"] <= 0.2
        assert await active() == "0.0"
        assert orjson.loads(await (await client.get("/_gateway/alerts")).read()) == {"alerts": []}
        events = [r for r in logs.records() if r["event"] in ("alert_firing", "alert_resolved")]
        assert [e["event"] for e in events] == ["alert_firing", "alert_resolved"]
        assert {k: events[0][k] for k in ("alert", "vendor", "threshold")} == {
            "alert": "sandbox-errors",
            "vendor": "sandbox",
            "threshold": 0.2,
        }
        print(
            f"fired {fired_at - start:.0f} s after the failures began, resolved "
            f"{resolved_at - start - 40:.0f} s after they stopped (clock seconds)"
        )
    finally:
        for client in started:
            await client.close()


async def failing_minute(client: GatewayClient, clock: ManualClock) -> None:
    """Enough 503s for the alert to fire (the rule needs 15 clock seconds)."""
    for _ in range(16):
        for _ in range(5):  # 25 answers by the evaluation at t+5: min_requests is 20
            async with client.get("/sandbox/v1/flaky?fail=1000&key=all") as resp:
                assert resp.status == 503
        await tick(client, clock)
    assert client.app.services.alerts.firing()


async def test_a_vendor_a_reload_adds_counts_from_its_first_request(
    vendor: Any, write_config: Any, logs: CapturedLogs
) -> None:
    """Its history starts at the reload: requests sent before the monitor's next tick are in the
    window, not in its baseline (the README's alert example added a vendor and failed it at once)."""
    started: list[GatewayClient] = []
    try:
        client, clock, _hook = await start_all(vendor, write_config, logs, started)
        sandbox_url = client.app.config.vendors["sandbox"].base_url
        path = client.app.config.path
        path.write_text(path.read_text() + f'\n[vendors.flaky]\nbase_url = "{sandbox_url}"\n')
        assert await reload(client.app)
        for i in range(25):  # before the next tick
            async with client.get(f"/flaky/v1/flaky?fail=9&key=k{i}") as resp:
                assert resp.status == 503
        await tick(client, clock)
        window = client.app.services.history.window("flaky", 60)
        assert (window.requests, window.server_errors) == (25, 25)
    finally:
        for client in started:
            await client.close()


async def timed_requests(client: GatewayClient, count: int) -> float:
    """The slowest of ``count`` requests through the gateway, in seconds."""
    slowest = 0.0
    for _ in range(count):
        started = time.perf_counter()
        async with client.get("/sandbox/v1/customers?limit=1") as resp:
            assert resp.status == 200
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


async def test_a_hung_webhook_never_slows_requests_and_its_queue_is_bounded(
    vendor: Any, write_config: Any, logs: CapturedLogs
) -> None:
    started: list[GatewayClient] = []
    try:
        client, clock, hook = await start_all(
            vendor, write_config, logs, started, extra="webhook_timeout_seconds = 600"
        )
        hook.stuck = True
        await failing_minute(client, clock)
        await asyncio.wait_for(hook.arrived.wait(), 30)  # the notifier is inside a POST that never ends
        notifier = client.app.monitor.notifier
        slowest = await timed_requests(client, 50)
        assert slowest < 5.0  # nowhere near the webhook's 600 s; ~ms on an idle machine
        for i in range(MAX_QUEUE):  # the queue's fill, while the notifier is stuck on the first notice
            notifier.post({"alert": f"a{i}", "vendor": "sandbox", "status": "firing"})
        assert notifier.queued == MAX_QUEUE and notifier.dropped == 0
        more = 250
        for i in range(more):
            notifier.post({"alert": f"b{i}", "vendor": "sandbox", "status": "firing"})
        assert notifier.queued == MAX_QUEUE and notifier.dropped == more  # the oldest made room
        assert next(r for r in logs.records() if r["event"] == "alert_webhook_dropped")["dropped"] == 1
        assert await timed_requests(client, 10) < 5.0
    finally:
        for client in started:
            await client.close()  # closing cancels the stuck POST


async def test_a_failing_webhook_is_retried_with_backoff_and_a_dead_one_given_up(
    vendor: Any, write_config: Any, logs: CapturedLogs, unused_tcp_port: int
) -> None:
    started: list[GatewayClient] = []
    try:
        client, clock, hook = await start_all(vendor, write_config, logs, started)
        client.app.monitor.notifier.base_delay_seconds = 0.01
        hook.fail_first = 2  # 503, 503, then taken
        await failing_minute(client, clock)
        await until(lambda: len(hook.received) == 1, "the notice after two failed tries")
        assert hook.tries == 3 and client.app.monitor.notifier.sent == 1
        assert hook.received[0]["status"] == "firing"

        # Nothing listens on this port: every try is refused at once, retried, then given up.
        dead_url = f"http://127.0.0.1:{unused_tcp_port}/hooks/gateway/s3cr3t-token"
        client, clock, _ = await start_all(
            vendor, write_config, logs, started, webhook_url=dead_url, extra="webhook_attempts = 3"
        )
        notifier = client.app.monitor.notifier
        notifier.base_delay_seconds = 0.01
        await failing_minute(client, clock)
        await until(lambda: notifier.failed == 1, "the notice given up")
        (failed,) = [r for r in logs.records() if r["event"] == "alert_webhook_failed"]
        assert failed["attempts"] == 3 and failed["host"] == "127.0.0.1"
        assert failed["alert"] == "sandbox-errors" and "unreachable" in failed["error"]
        assert b"s3cr3t-token" not in logs.getvalue()  # the URL's path may be a credential: never logged
        assert await timed_requests(client, 20) < 5.0
    finally:
        for client in started:
            await client.close()


async def test_a_webhook_that_answers_too_late_times_out(
    vendor: Any, write_config: Any, logs: CapturedLogs
) -> None:
    started: list[GatewayClient] = []
    try:
        client, clock, hook = await start_all(
            vendor, write_config, logs, started, extra="webhook_timeout_seconds = 0.3\nwebhook_attempts = 2"
        )
        hook.stuck = True
        notifier = client.app.monitor.notifier
        notifier.base_delay_seconds = 0.01
        await failing_minute(client, clock)
        await until(lambda: notifier.failed == 1, "two timed-out tries")
        assert hook.tries == 2
        (failed,) = [r for r in logs.records() if r["event"] == "alert_webhook_failed"]
        assert failed["error"] == "no answer within 0.3s"
    finally:
        for client in started:
            await client.close()
