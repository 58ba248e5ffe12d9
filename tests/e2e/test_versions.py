"""API version pinning (header, query, path prefix) and vendor Deprecation / Sunset notices."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from tests.conftest import CapturedLogs, vendor_block


def echo_vendor(seen: list[web.Request], headers: dict[str, str] | None = None) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"path": request.raw_path}, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def test_header_pin_replaces_the_callers_value(gateway: Any, vendor: Any) -> None:
    seen: list[web.Request] = []
    server = await vendor(echo_vendor(seen))
    client = await gateway(
        vendor_block("stripe", server, 'version = { header = "Stripe-Version", value = "2024-06-20" }')
    )
    await client.get("/stripe/v1/customers")
    await client.get(
        "/stripe/v1/customers", headers=[("stripe-version", "1999-01-01"), ("Stripe-Version", "x")]
    )
    assert [r.headers.getall("Stripe-Version") for r in seen] == [["2024-06-20"], ["2024-06-20"]]


async def test_query_pin_replaces_the_callers_value(gateway: Any, vendor: Any) -> None:
    seen: list[web.Request] = []
    server = await vendor(echo_vendor(seen))
    client = await gateway(
        vendor_block("azure", server, 'version = { query = "api-version", value = "2023-05-01" }')
    )
    await client.get("/azure/things?api-version=2019-01-01&top=5&api%2Dversion=old")
    await client.get("/azure/things")
    assert seen[0].raw_path == "/things?top=5&api-version=2023-05-01"
    assert seen[1].raw_path == "/things?api-version=2023-05-01"


@pytest.mark.parametrize(
    ("caller", "sent"),
    [
        ("/acme/customers", "/base/v2/customers"),
        ("/acme/v2/customers", "/base/v2/customers"),
        ("/acme/v1/customers?x=1", "/base/v2/customers?x=1"),
        ("/acme/v1beta3/customers/", "/base/v2/customers/"),
        ("/acme/vip/customers", "/base/v2/vip/customers"),  # not a version: kept
        ("/acme/v1", "/base/v2"),
        ("/acme", "/base/v2"),
    ],
)
async def test_path_prefix_pin(gateway: Any, vendor: Any, caller: str, sent: str) -> None:
    seen: list[web.Request] = []
    server = await vendor(echo_vendor(seen))
    client = await gateway(
        f'[vendors.acme]\nbase_url = "{server.make_url("/base")}"\nversion = {{ path_prefix = "/v2" }}\n'
    )
    resp = await client.get(caller)
    assert resp.status == 200
    assert seen[0].raw_path == sent


async def test_routes_match_the_unversioned_path(gateway: Any, vendor: Any) -> None:
    seen: list[web.Request] = []
    server = await vendor(echo_vendor(seen))
    client = await gateway(
        vendor_block("acme", server, 'version = { path_prefix = "/v2" }'),
        routes={"acme": 'vendor = "acme"\n[[route]]\nmethod = "GET"\npath = "/customers/*"\n'},
    )
    assert (await client.get("/acme/v1/customers/7")).status == 200
    assert (await client.get("/acme/customers/7")).status == 200
    assert (await client.get("/acme/v1/invoices/7")).status == 404
    assert [r.raw_path for r in seen] == ["/v2/customers/7", "/v2/customers/7"]


DEPRECATED = {
    "Deprecation": "@1735689600",
    "Sunset": "Wed, 31 Dec 2025 23:59:59 GMT",
    "Link": '<https://docs.example/migrate>; rel="deprecation"; type="text/html"',
}


async def test_deprecation_headers_are_logged_once_counted_and_shown(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    seen: list[web.Request] = []
    server = await vendor(echo_vendor(seen, DEPRECATED))
    client = await gateway(
        vendor_block("acme", server),
        routes={"acme": 'vendor = "acme"\nexpose = "all"\n[[route]]\nmethod = "GET"\npath = "/legacy/*"\n'},
    )
    for path in ("/acme/legacy/1", "/acme/legacy/2", "/acme/legacy/3", "/acme/other", "/acme/more"):
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.headers["Deprecation"] == "@1735689600"  # passed on to the caller too
    events = [r for r in logs.records() if r["event"] == "vendor_deprecation"]
    assert [(e["vendor"], e["route"], e["path"]) for e in events] == [
        ("acme", "/legacy/*", "/legacy/1"),
        ("acme", "*", "/other"),
    ]
    assert events[0]["level"] == "warning"
    assert events[0]["deprecated_at"] == "2025-01-01T00:00:00Z"
    assert events[0]["sunset_at"] == "2025-12-31T23:59:59Z"
    assert events[0]["link"] == "https://docs.example/migrate"
    page = await (await client.get("/_gateway/deprecations")).json()
    assert [(d["vendor"], d["route"], d["count"]) for d in page["deprecations"]] == [
        ("acme", "*", 2),
        ("acme", "/legacy/*", 3),
    ]
    shown = page["deprecations"][1]
    assert shown["deprecated_at"] == "2025-01-01T00:00:00Z" and shown["sunset_at"] == "2025-12-31T23:59:59Z"
    assert shown["example"] == "GET /legacy/1"
    counts = client.app.services.deprecations.counts()
    assert counts == {("acme", "/legacy/*"): 3, ("acme", "*"): 2}


async def test_the_sandbox_legacy_endpoint_is_noticed(gateway: Any, vendor: Any, logs: CapturedLogs) -> None:
    from gateway.sandbox import create_app as sandbox_app

    server = await vendor(sandbox_app())
    client = await gateway(vendor_block("sandbox", server))
    for _ in range(2):
        assert (await client.get("/sandbox/v1/legacy/customers")).status == 200
    (event,) = [r for r in logs.records() if r["event"] == "vendor_deprecation"]
    assert event["deprecated_at"] == "2025-01-01T00:00:00Z" and event["sunset_at"] == "2025-12-31T23:59:59Z"
