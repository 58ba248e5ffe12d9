"""/_gateway/metrics in the Prometheus text format, and the dashboard, as a scraper and a person see them."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

DOCUMENTED_METRICS = {
    "gateway_requests",
    "gateway_request_duration_seconds",
    "gateway_upstream_duration_seconds",
    "gateway_request_bytes",
    "gateway_response_bytes",
    "gateway_ratelimit_wait_seconds",
    "gateway_ratelimit_rejected",
    "gateway_idempotency",
    "gateway_vendor_deprecations",
}


def vendor_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="hello", headers={"Deprecation": "@1735689600"})

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_get("/boom", boom)
    return app


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_what_callers_saw(gateway: Any, vendor: Any) -> None:
    server = await vendor(vendor_app())
    client = await gateway(
        f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n',
        routes={"acme": 'vendor = "acme"\nexpose = "all"\n[[route]]\nmethod = "POST"\npath = "/ok"\n'},
    )
    for _ in range(3):
        assert (await client.get("/acme/ok")).status == 200
    assert (await client.post("/acme/ok", data=b"12345")).status == 200
    assert (await client.get("/acme/boom")).status == 503
    assert (await client.get("/nobody/x")).status == 404

    resp = await client.get("/_gateway/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert names >= DOCUMENTED_METRICS
    got = samples(text)
    assert (
        got[
            (
                "gateway_requests_total",
                (("method", "GET"), ("route", "*"), ("status", "200"), ("vendor", "acme")),
            )
        ]
        == 3
    )
    assert (
        got[
            (
                "gateway_requests_total",
                (("method", "POST"), ("route", "/ok"), ("status", "200"), ("vendor", "acme")),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "gateway_requests_total",
                (("method", "GET"), ("route", "*"), ("status", "503"), ("vendor", "acme")),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "gateway_requests_total",
                (("method", "GET"), ("route", "*"), ("status", "404"), ("vendor", "-")),
            )
        ]
        == 1
    )
    assert got[("gateway_request_duration_seconds_count", (("vendor", "acme"),))] == 5
    assert got[("gateway_upstream_duration_seconds_count", (("vendor", "acme"),))] == 5
    assert got[("gateway_request_bytes_total", (("vendor", "acme"),))] == 5
    assert got[("gateway_response_bytes_total", (("vendor", "acme"),))] == 4 * len("hello") + len("down")
    assert got[("gateway_vendor_deprecations_total", (("route", "*"), ("vendor", "acme")))] == 3
    # Histogram buckets are cumulative and end at the count.
    assert got[("gateway_request_duration_seconds_bucket", (("le", "+Inf"), ("vendor", "acme")))] == 5


async def test_dashboard_is_a_page_for_people(gateway: Any, vendor: Any) -> None:
    async def sneaky(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Deprecation": "@1735689600", "Sunset": "</script><b>x"})

    app = vendor_app()
    app.router.add_get("/sneaky", sneaky)
    server = await vendor(app)
    client = await gateway(f'[vendors.acme]\nbase_url = "{server.make_url("/")}"\n')
    await client.get("/acme/ok")
    await client.get("/acme/sneaky")
    resp = await client.get("/_gateway/dashboard")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    page = await resp.text()
    # One self-contained page: no external script, style or image; the figures inside as JSON.
    assert "src=" not in page and "<link" not in page and "@import" not in page
    initial = page.split('<script id="initial" type="application/json">')[1].split("</script>")[0]
    data = orjson.loads(initial)
    assert [v["name"] for v in data["vendors"]] == ["acme"]
    assert "2025-01-01" in str(data["deprecations"])  # the deprecation notice with its date
    # A vendor's header cannot close the script element: every "<" in the JSON is escaped.
    assert "</script><b>" not in page and "\\u003c/script>\\u003cb>x" in initial
    assert any(n.get("sunset") == "</script><b>x" for n in data["deprecations"])


async def test_each_vendors_series_exist_at_zero_before_its_first_request(gateway: Any, vendor: Any) -> None:
    server = await vendor(vendor_app())
    client = await gateway(f'[vendors.v]\nbase_url = "{server.make_url("/")}"\n')
    got = samples(await (await client.get("/_gateway/metrics")).text())
    v = (("vendor", "v"),)
    for name in (
        "gateway_request_bytes_total",
        "gateway_response_bytes_total",
        "gateway_ratelimit_rejected_total",
    ):
        assert got[(name, v)] == 0.0, name
    assert got[("gateway_request_duration_seconds_count", v)] == 0.0
    assert got[("gateway_upstream_duration_seconds_count", v)] == 0.0
    for outcome in ("stored", "replayed", "in_flight", "mismatch"):
        assert got[("gateway_idempotency_total", (("outcome", outcome), ("vendor", "v")))] == 0.0
