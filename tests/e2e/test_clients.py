"""Caller authentication and least privilege: [clients] keys, allow patterns, keys never forwarded."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from tests.conftest import CapturedLogs, vendor_block

KEYS = {"billing": "billing-key-0123456789", "reports": "reports-key-0123456789", "ops": "ops-key-0123456789"}


def echo_vendor(seen: list[dict[str, Any]]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append({"path": request.raw_path, "headers": dict(request.headers)})
        return web.json_response({"path": request.raw_path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def setup(gateway: Any, vendor: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, key in KEYS.items():
        monkeypatch.setenv(f"GW_KEY_{name.upper()}", key)
    monkeypatch.setenv("GW_HUB_TOKEN", "hubspot-vendor-token")
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_vendor(seen))
    client = await gateway(
        f"""
        [clients.billing]
        key = "env:GW_KEY_BILLING"
        allow = ["stripe", "hubspot:GET /crm/**", "hubspot:POST /crm/*/notes"]
        [clients.reports]
        key = "env:GW_KEY_REPORTS"
        allow = ["hubspot:* /reports/*"]
        [clients.ops]
        key = "env:GW_KEY_OPS"
        allow = []
        {vendor_block("stripe", server)}
        {vendor_block("hubspot", server, 'auth = { type = "bearer", token = "env:GW_HUB_TOKEN" }')}
        {vendor_block("declared", server)}
        """,
        routes={"declared": 'vendor = "declared"\n[[route]]\npath = "/only"\n'},
    )
    return client, seen


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        (None, "GET", "/stripe/v1/customers", 401),
        ("nobody", "GET", "/stripe/v1/customers", 401),
        ("billing", "GET", "/stripe/v1/customers", 200),
        ("billing", "DELETE", "/stripe/v1/customers/cus_1", 200),  # whole vendor
        ("billing", "GET", "/stripe", 200),
        ("billing", "GET", "/hubspot/crm/contacts/1", 200),  # ** is the rest
        ("billing", "GET", "/hubspot/crm", 200),  # ** may be empty, as in routes files
        ("billing", "GET", "/hubspot/crmx/1", 403),
        ("billing", "HEAD", "/hubspot/crm/contacts", 200),  # a GET rule admits HEAD
        ("billing", "POST", "/hubspot/crm/contacts", 403),  # method
        ("billing", "POST", "/hubspot/crm/c1/notes", 200),  # * is one segment
        ("billing", "POST", "/hubspot/crm/c1/x/notes", 403),
        ("billing", "GET", "/hubspot/reports/q1", 403),
        ("reports", "GET", "/hubspot/reports/q1", 200),
        ("reports", "PATCH", "/hubspot/reports/q1", 200),  # * method
        ("reports", "GET", "/hubspot/reports/q1/rows", 403),
        ("reports", "GET", "/stripe/v1/customers", 403),
        ("ops", "GET", "/stripe/v1/customers", 403),  # allow = []: authenticated, allowed nothing
        ("billing", "GET", "/declared/only", 403),
        (None, "GET", "/nosuchvendor/x", 401),  # unknown callers learn no vendor names
        ("ops", "GET", "/nosuchvendor/x", 404),
        (None, "GET", "/declared/undeclared", 401),
        ("billing", "GET", "/declared/undeclared", 404),
    ],
)
async def test_allow_patterns(setup: Any, who: str | None, method: str, path: str, status: int) -> None:
    client, seen = setup
    headers = {"X-Gateway-Key": KEYS.get(who, "not-a-key-at-all")} if who else {}
    resp = await client.request(method, path, headers=headers)
    assert resp.status == status, await resp.text()
    if status >= 400:
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert seen == []  # the vendor never saw a refused request
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_gateway_key_is_never_forwarded(setup: Any) -> None:
    client, seen = setup
    key = KEYS["billing"]
    assert (await client.get("/stripe/a", headers={"Authorization": f"Bearer {key}"})).status == 200
    assert (await client.get("/stripe/b", headers={"X-Gateway-Key": key})).status == 200
    assert (await client.get("/hubspot/crm/c", headers={"Authorization": f"bearer {key}"})).status == 200
    both = {"X-Gateway-Key": key, "Authorization": "Bearer caller-own-vendor-token"}
    assert (await client.get("/stripe/d", headers=both)).status == 200
    for record in seen:
        assert key not in str(record["headers"])
        assert "X-Gateway-Key" not in record["headers"]
    assert "Authorization" not in seen[0]["headers"]
    assert "Authorization" not in seen[1]["headers"]
    assert seen[2]["headers"]["Authorization"] == "Bearer hubspot-vendor-token"  # vendor auth instead
    # With X-Gateway-Key carrying the key, Authorization is the caller's own business.
    assert seen[3]["headers"]["Authorization"] == "Bearer caller-own-vendor-token"


async def test_a_wrong_key_in_one_header_is_not_rescued_by_the_other(setup: Any) -> None:
    client, seen = setup
    headers = {"X-Gateway-Key": "wrong-key", "Authorization": f"Bearer {KEYS['billing']}"}
    resp = await client.get("/stripe/a", headers=headers)
    assert resp.status == 401
    problem = await resp.json()
    assert problem["title"] == "Missing or unknown gateway key"
    assert "wrong-key" not in await resp.text()
    assert seen == []


async def test_access_log_names_the_client(setup: Any, logs: CapturedLogs) -> None:
    client, _ = setup
    await client.get("/stripe/a", headers={"X-Gateway-Key": KEYS["billing"]})
    await client.get("/stripe/a", headers={"X-Gateway-Key": KEYS["reports"]})
    await client.get("/stripe/a")
    records = logs.access()
    assert [(r["client"], r["status"]) for r in records] == [("billing", 200), ("reports", 403), (None, 401)]
    text = logs.getvalue().decode()
    for key in KEYS.values():
        assert key not in text


async def test_without_clients_nobody_is_authenticated(gateway: Any, vendor: Any) -> None:
    seen: list[dict[str, Any]] = []
    server = await vendor(echo_vendor(seen))
    client = await gateway(vendor_block("stripe", server))
    resp = await client.get("/stripe/a", headers={"X-Gateway-Key": "anything"})
    assert resp.status == 200
    assert "X-Gateway-Key" not in seen[0]["headers"]
