"""Schema validation and transforms end to end: the shipped billing routes against the sandbox vendor."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.sandbox import SANDBOX_STATE, create_app
from tests.conftest import CapturedLogs

ROOT = Path(__file__).resolve().parents[2]
TRANSFORMS = ROOT / "transforms"
ROUTES = (ROOT / "routes" / "billing.toml").read_text()

CRM_ADA = {
    "id": 42,
    "fullName": "Ada Lovelace",
    "emailAddress": "ada@example.com",
    "state": "I",
    "since": "10/12/2015",
    "addr": {"street": "1 Analytical Way", "city": "London", "country": "GB"},
    "internalNotes": "never leaves the CRM",
}


def billing_config(base_url: str) -> str:
    return f"""
    [gateway]
    transforms_dir = "{TRANSFORMS}"
    [vendors.billing]
    base_url = "{base_url}"
    """


@pytest.fixture
async def sandbox(vendor: Any) -> Any:
    return await vendor(create_app())


async def test_crm_customer_is_validated_mapped_and_mapped_back(gateway: Any, sandbox: Any) -> None:
    client = await gateway(billing_config(str(sandbox.make_url("/"))), routes={"billing": ROUTES})
    resp = await client.post("/billing/v1/customers", json=CRM_ADA)
    assert resp.status == 201, await resp.text()
    answer = await resp.json()
    # The caller gets the vendor's answer in its own (CRM) shape.
    assert answer["fullName"] == "Ada Lovelace"
    assert answer["emailAddress"] == "ada@example.com"
    assert answer["id"] == 42
    assert answer["state"] == "I"
    assert answer["billingId"].startswith("cus_")
    assert answer["addr"] == {"street": "1 Analytical Way", "city": "London"}
    # The vendor got the billing shape, and nothing the mapping did not name.
    state = sandbox.app[SANDBOX_STATE]
    created = state.customers[answer["billingId"]]
    assert created["name"] == "Ada Lovelace"
    assert created["address"]["line1"] == "1 Analytical Way"
    assert created["address"]["country"] == "GB"
    assert created["metadata"] == {
        "crm_id": "42",
        "status": "inactive",
        "customer_since": "2015-12-10T00:00:00Z",
        "source": "crm",
    }
    assert "internalNotes" not in str(created)


async def test_invalid_body_gets_400_with_every_failing_path_and_never_reaches_the_vendor(
    gateway: Any, sandbox: Any
) -> None:
    client = await gateway(billing_config(str(sandbox.make_url("/"))), routes={"billing": ROUTES})
    bad = {"id": 0, "fullName": "", "emailAddress": "nope", "state": "X", "addr": {"city": 3, "extra": 1}}
    resp = await client.post("/billing/v1/customers", json=bad)
    assert resp.status == 400
    assert resp.headers["Content-Type"] == "application/problem+json"
    problem = await resp.json()
    paths = sorted(e["path"] for e in problem["errors"])
    assert paths == ["/addr", "/addr", "/addr/city", "/emailAddress", "/fullName", "/id", "/state"]
    assert all(e["message"] for e in problem["errors"])
    assert sandbox.app[SANDBOX_STATE].calls["POST /v1/customers"] == 0


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b'{"id": 1,', {"Content-Type": "application/json"}, "not valid JSON"),
        (b"", {"Content-Type": "application/json"}, "has none"),
        (b"id=1", {"Content-Type": "application/x-www-form-urlencoded"}, "needs a JSON body"),
        (b"\xff\xfe", {"Content-Type": "application/json"}, "not valid JSON"),
    ],
)
async def test_non_json_body_is_400_saying_where(
    gateway: Any, sandbox: Any, body: bytes, headers: dict[str, str], expected: str
) -> None:
    client = await gateway(billing_config(str(sandbox.make_url("/"))), routes={"billing": ROUTES})
    resp = await client.post("/billing/v1/customers", data=body, headers=headers)
    assert resp.status == 400
    problem = await resp.json()
    assert expected in problem["detail"]
    if expected == "not valid JSON" and body.startswith(b"{"):
        assert "line 1 column" in problem["detail"]
    assert sandbox.app[SANDBOX_STATE].calls["POST /v1/customers"] == 0


def odd_vendor(answer: object, status: int = 200) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


ODD_ROUTES = """
vendor = "billing"
expose = "all"
[[route]]
method = "GET"
path = "/enforced/*"
response_schema = "billing/customer.schema.json"
[[route]]
method = "GET"
path = "/reported/*"
response_schema = "billing/customer.schema.json"
response_schema_mode = "report"
[[route]]
method = "GET"
path = "/mapped/*"
response_transform = "billing/customer-to-crm.toml"
"""


async def test_bad_vendor_answer_is_502_in_enforce_mode_and_passes_in_report_mode(
    gateway: Any, vendor: Any, logs: CapturedLogs
) -> None:
    server = await vendor(odd_vendor({"id": 7, "object": "customer", "name": "x"}))
    client = await gateway(billing_config(str(server.make_url("/"))), routes={"billing": ODD_ROUTES})

    resp = await client.get("/billing/enforced/1")
    assert resp.status == 502
    problem = await resp.json()
    assert {e["path"] for e in problem["errors"]} == {"", "/id"}  # `created` missing; id not a string

    resp = await client.get("/billing/reported/1")
    assert resp.status == 200
    assert await resp.json() == {"id": 7, "object": "customer", "name": "x"}
    events = [r for r in logs.records() if r["event"] == "response_schema_failed"]
    assert len(events) == 1 and events[0]["route"] == "/reported/*"

    # Routes without response stages pass the same answer untouched.
    resp = await client.get("/billing/other")
    assert resp.status == 200


async def test_response_transform_failure_is_502_naming_rule_and_path(gateway: Any, vendor: Any) -> None:
    server = await vendor(odd_vendor({"id": "cus_1", "name": "x", "created": "yesterday"}))
    client = await gateway(billing_config(str(server.make_url("/"))), routes={"billing": ODD_ROUTES})
    resp = await client.get("/billing/mapped/1")
    assert resp.status == 502
    detail = (await resp.json())["detail"]
    assert "map[8]" in detail and "/created" in detail


async def test_vendor_errors_pass_through_routes_with_response_stages(gateway: Any, vendor: Any) -> None:
    server = await vendor(odd_vendor({"error": {"type": "invalid_request_error"}}, status=404))
    client = await gateway(billing_config(str(server.make_url("/"))), routes={"billing": ODD_ROUTES})
    resp = await client.get("/billing/enforced/1")
    assert resp.status == 404
    assert await resp.json() == {"error": {"type": "invalid_request_error"}}


async def test_request_transform_failure_is_400_naming_the_rule(
    gateway: Any, sandbox: Any, write_config: Callable[..., Path]
) -> None:
    client = await gateway(
        billing_config(str(sandbox.make_url("/"))),
        routes={
            "billing": """
            vendor = "billing"
            [[route]]
            method = "POST"
            path = "/v1/customers"
            request_transform = "billing/customer-from-crm.toml"
            """
        },
    )
    resp = await client.post(
        "/billing/v1/customers", json={"fullName": "x", "emailAddress": "e", "id": 1, "state": "Q"}
    )
    assert resp.status == 400
    detail = (await resp.json())["detail"]
    assert "map[8]" in detail and "/state" in detail
    assert sandbox.app[SANDBOX_STATE].calls["POST /v1/customers"] == 0


def test_check_reports_broken_schemas_and_specs_by_file_and_rule(write_config: Callable[..., Path]) -> None:
    path = write_config(
        '[vendors.v]\nbase_url = "https://x.com"\n',
        routes={
            "v": """
            vendor = "v"
            [[route]]
            path = "/a"
            request_schema = "bad.schema.json"
            request_transform = "bad.toml"
            response_schema = "missing.schema.json"
            response_schema_mode = "loud"
            """
        },
        files={
            "transforms/bad.schema.json": '{"type": "object", "properties": {"a": {"type": "strng"}}}',
            "transforms/bad.toml": '[[map]]\nto = "/a"\nfrom = "/b"\ntype = "text"\n[[map]]\nfrom = "/c"\n',
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    out = result.stderr
    assert "route[1].request_schema: bad.schema.json has 1 problem(s), listed under its own file" in out
    assert "bad.schema.json: /properties/a/type: 'strng' is not a JSON Schema type" in out
    assert "route[1].response_schema: file not found" in out
    assert "route[1].response_schema_mode: must be one of 'enforce', 'report'" in out
    assert "bad.toml: map[1].type:" in out
    assert "bad.toml: map[2]" in out
