"""``/_gateway/status`` (what the dashboard draws) and ``/_gateway/alerts``: figures over a window of
the in-memory history, with the monitor on a ManualClock; bad input is a 400 problem+json."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.config import load_config
from gateway.observability.logging import Logger
from gateway.sandbox import create_app as sandbox_app
from tests.conftest import CapturedLogs
from tests.manual_clock import ManualClock
from tests.monitor_clock import start_gateway, tick


def vendor_app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["status"]), text="x")

    app = web.Application()
    app.router.add_get("/status/{status}", answer)
    return app


async def test_status_shows_rates_ratios_and_latency_estimates_over_the_window(
    vendor: Any, write_config: Any, logs: CapturedLogs
) -> None:
    server = await vendor(vendor_app())
    config = load_config(
        write_config(
            f"""
[vendors.acme]
base_url = "{server.make_url("/")}"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}
rate_limit = {{ requests = 1000, per_seconds = 1 }}

[vendors.quiet]
base_url = "{server.make_url("/")}"

[[alerts.rule]]
name = "acme-errors"
vendor = "acme"
kind = "error_ratio"
threshold = 0.05
min_requests = 1
"""
        )
    )
    clock = ManualClock()
    client = await start_gateway(config, Logger(stream=logs), clock)
    try:
        for _ in range(10):  # 10 s of 8 answers a second: 6 x 200, 1 x 404, 1 x 502
            for status in (200, 200, 200, 200, 200, 200, 404, 502):
                async with client.get(f"/acme/status/{status}") as resp:
                    assert resp.status == status
            await tick(client, clock)
        await tick(client, clock, 5)  # the next evaluation
        data = await (await client.get("/_gateway/status?window=60")).json()
        acme, quiet = data["vendors"]
        assert (acme["name"], quiet["name"]) == ("acme", "quiet")
        assert acme["requests"] == 80 and acme["client_errors"] == 10 and acme["server_errors"] == 10
        assert acme["rps"] == round(80 / 60, 3)
        assert acme["ratio_4xx"] == 0.125 and acme["ratio_5xx"] == 0.125
        # Estimates inside a bucket, not its bound: every answer took well under 100 ms here.
        assert 0 < acme["p50_seconds"] < acme["p99_seconds"] < 0.1
        assert acme["p50_seconds"] not in (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
        assert acme["circuit"] == "off" and quiet["circuit"] == "closed"
        assert acme["rate_limit"] == "1000/1s local" and quiet["rate_limit"] is None
        assert acme["queued"] == 0 and acme["dead_letters"] == 0 and acme["rejected"] == 0
        series = acme["series"]
        assert data["point_seconds"] == 1 and len(series["rps"]) == 60
        # Seconds 1001-1010 had the traffic; the jump to 1015 left 1011-1014 unsampled (None).
        assert series["rps"][-15:-5] == [8.0] * 10 and series["rps"][-5:] == [None] * 4 + [0.0]
        assert series["ratio_5xx"][-15:-5] == [0.125] * 10 and series["ratio_5xx"][-1] is None
        assert series["rps"][0] is None  # before the gateway started: no sample, not zero
        assert quiet["requests"] == 0 and quiet["p99_seconds"] is None
        assert [a["alert"] for a in data["alerts"]] == ["acme-errors"]
        alerts = await (await client.get("/_gateway/alerts")).json()
        assert alerts["alerts"] == data["alerts"]
        hour = await (await client.get("/_gateway/status?window=1h")).json()
        assert hour["point_seconds"] == 60 and hour["vendors"][0]["requests"] == 80
    finally:
        await client.close()


async def test_status_and_alerts_endpoints_refuse_bad_input_with_problems(gateway: Any, vendor: Any) -> None:
    server = await vendor(sandbox_app())
    client = await gateway(f'[vendors.sandbox]\nbase_url = "{server.make_url("/")}"\n')
    for query, detail in (
        ("?window=2h", "window must be 5m, 1h or a number of seconds from 60 to 3600"),
        ("?window=59", "window must be 5m, 1h or a number of seconds"),
        ("?window=-5", "window must be"),
        ("?window=" + "9" * 5000, "window must be"),
        ("?window=5m&window=1h", "window is given more than once"),
        ("?windw=1h", "unknown query parameter 'windw'"),
        ("?" + "&".join(f"k{i}=1" for i in range(50)), "too many query parameters"),
    ):
        resp = await client.get("/_gateway/status" + query)
        assert resp.status == 400, query
        assert resp.headers["Content-Type"] == "application/problem+json"
        problem = await resp.json(content_type=None)
        assert detail in problem["detail"] and problem["request_id"], (query, problem)
    resp = await client.post("/_gateway/alerts", data=b"{}")
    assert resp.status == 405 and resp.headers["Content-Type"] == "application/problem+json"
    for query in ("", "?window=5m", "?window=1h", "?window=600"):
        resp = await client.get("/_gateway/status" + query)
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        data = await resp.json()
        assert [v["name"] for v in data["vendors"]] == ["sandbox"]
        assert len(data["vendors"][0]["series"]["rps"]) <= 60
    assert (await (await client.get("/_gateway/alerts")).json()) == {"alerts": []}
