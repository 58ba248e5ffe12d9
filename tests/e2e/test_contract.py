"""``gateway contract check`` end to end (docs/operations.md): the real command in its own process, against
the sandbox vendor (the shipped config, routes, schemas and examples, pointed at a sandbox on a free
port) and against a local vendor whose answers drifted from its schemas."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.sandbox import SANDBOX_STATE, create_app

ROOT = Path(__file__).resolve().parents[2]


async def contract(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    """Run ``gateway contract ARGS``; (exit code, stdout lines, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "contract",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def shipped(tmp_path: Path, sandbox_url: str) -> Path:
    """The repository's config, routes, schemas and examples, with the vendors at ``sandbox_url``."""
    shutil.copytree(ROOT / "routes", tmp_path / "routes")
    shutil.copytree(ROOT / "transforms", tmp_path / "transforms")
    config = (ROOT / "config.toml").read_text().replace("http://127.0.0.1:8081", sandbox_url.rstrip("/"))
    path = tmp_path / "config.toml"
    path.write_text(config)
    return path


CUSTOMER = "billing /v1/customers/* billing/examples/customer.json"
CREATE = "billing /v1/customers billing/examples/create.json"


async def test_the_shipped_examples_pass_against_the_sandbox_and_fail_naming_the_field_once_it_drifts(
    vendor: Any, tmp_path: Path
) -> None:
    server = await vendor(create_app())
    state = server.app[SANDBOX_STATE]
    config = str(shipped(tmp_path, str(server.make_url("/"))))

    code, lines, err = await contract("check", "--config", config)
    assert code == 0, (lines, err)
    assert lines == [
        f"SKIP {CREATE}: POST without an idempotency key the vendor gets (idempotency.forward_header) is not "
        "safe to repeat; --allow-writes sends it",
        f"PASS {CUSTOMER}",
    ]
    assert state.calls == {"GET /v1/customers/{id}": 1}  # the skipped POST was never sent

    # The vendor changes its API under its callers.
    async with aiohttp.ClientSession() as session:
        drifted = {"set": {"created": "2024-06-01"}, "rename": {"name": "full_name"}}
        async with session.post(server.make_url("/_sandbox/drift"), json=drifted) as resp:
            assert resp.status == 200
    code, lines, err = await contract("check", "--config", config, "--vendor", "billing")
    assert code == 1, (lines, err)
    assert lines[1:] == [
        f'FAIL {CUSTOMER}: (root): "name" is a required property',
        f'FAIL {CUSTOMER}: /created: "2024-06-01" is not of type "integer"',
    ]

    state.drift = {}
    code, lines, _ = await contract("check", "--config", config)
    assert code == 0 and lines[-1] == f"PASS {CUSTOMER}"


async def test_allow_writes_sends_the_post_through_the_routes_pipeline(vendor: Any, tmp_path: Path) -> None:
    server = await vendor(create_app())
    state = server.app[SANDBOX_STATE]
    config = str(shipped(tmp_path, str(server.make_url("/"))))
    code, lines, err = await contract("check", "--config", config, "--allow-writes")
    assert code == 0, (lines, err)
    assert lines == [f"PASS {CREATE}", f"PASS {CUSTOMER}"]
    # The CRM-shaped example went through the route's request schema and transform.
    created = list(state.customers.values())[-1]
    assert created["name"] == "Ada Lovelace" and created["metadata"]["crm_id"] == "42"


SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "price", "tags"],
    "properties": {
        "id": {"type": "string"},
        "price": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


CALLS = web.AppKey("calls", list)


def drifting_vendor() -> web.Application:
    """A vendor whose answers no longer fit the shape its callers were promised; it records calls."""
    calls: list[dict[str, Any]] = []

    async def item(request: web.Request) -> web.Response:
        calls.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "auth": request.headers.get("Authorization"),
                "x": request.headers.get("X-Example"),
                "body": await request.read(),
            }
        )
        return web.json_response({"id": 7, "price": "9.99", "tags": ["a", 3], "name": "lamp"})

    async def fine(request: web.Request) -> web.Response:
        return web.json_response({"id": "7", "price": 999, "tags": ["a"]})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>")

    app = web.Application()
    app[CALLS] = calls
    app.router.add_route("*", "/items/{id}", item)
    app.router.add_get("/fine", fine)
    app.router.add_get("/broken", broken)
    app.router.add_get("/text", text)
    return app


def write(tmp_path: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else orjson.dumps(content).decode())


async def test_a_drifting_vendor_fails_with_every_schema_error(vendor: Any, tmp_path: Path) -> None:
    server = await vendor(drifting_vendor())
    write(
        tmp_path,
        {
            "config.toml": f"""
[vendors.shop]
base_url = "{server.make_url("/")}"
auth = {{ type = "bearer", token = "env:SHOP_TOKEN" }}
retry = {{ attempts = 1 }}

[vendors.shop.faults]
abort = {{ percent = 100 }}

[vendors.gone]
base_url = "http://127.0.0.1:9"
retry = {{ attempts = 1 }}

[clients.app]
key = "env:APP_KEY"
allow = ["shop"]
""",
            "routes/shop.toml": """
vendor = "shop"

[[route]]
method = "PUT"
path = "/items/*"
response_schema = "shop/item.schema.json"
examples = ["shop/put.json"]

[[route]]
method = "GET"
path = "/fine"
response_schema = "shop/item.schema.json"
response_transform = "shop/needs-name.toml"
examples = ["shop/fine.json"]

[[route]]
method = "GET"
path = "/broken"
examples = ["shop/broken.json"]

[[route]]
method = "GET"
path = "/text"
response_schema = "shop/item.schema.json"
examples = ["shop/text.json"]
""",
            "routes/gone.toml": 'vendor = "gone"\n[[route]]\nmethod = "GET"\npath = "/x"\nexamples = ["gone.json"]\n',
            "transforms/shop/item.schema.json": SCHEMA,
            "transforms/shop/needs-name.toml": '[[map]]\nto = "/title"\nfrom = "/name"\n',
            "transforms/shop/put.json": {
                "method": "PUT",
                "path": "/items/7",
                "query": {"expand": ["price", "tags"], "v": 2},
                "headers": {"X-Example": "yes"},
                "body": {"price": 999},
            },
            "transforms/shop/fine.json": {"method": "GET", "path": "/fine"},
            "transforms/shop/broken.json": {"method": "GET", "path": "/broken"},
            "transforms/shop/text.json": {"method": "GET", "path": "/text"},
            "transforms/gone.json": {"method": "GET", "path": "/x"},
        },
    )
    env = {"SHOP_TOKEN": "shop-secret-1234", "APP_KEY": "app-key-5678"}
    code, lines, err = await contract("check", "--config", str(tmp_path / "config.toml"), env=env)
    assert code == 1, err
    put = "shop /items/* shop/put.json"
    assert lines == [
        f'FAIL {put}: /id: 7 is not of type "string"',
        f'FAIL {put}: /price: "9.99" is not of type "integer"',
        f'FAIL {put}: /tags/1: 3 is not of type "string"',
        "FAIL shop /fine shop/fine.json: the response transform cannot apply: "
        + lines[3].split("the response transform cannot apply: ", 1)[1],
        'FAIL shop /broken shop/broken.json: the vendor answered 500, not 2xx: {"error": "boom"}',
        "FAIL shop /text shop/text.json: the vendor's answer is not JSON: "
        + lines[5].split("is not JSON: ", 1)[1],
        "FAIL gone /x gone.json: the gateway answered 502: "
        + lines[6].split("the gateway answered 502: ", 1)[1],
    ]
    assert "/name" in lines[3] and "vendor gone is unreachable" in lines[6]
    # Sent as the example says, with the vendor's credentials, no caller key needed, and no fault
    # injected (the vendor's faults would abort every call).
    (call,) = server.app[CALLS]
    assert call == {
        "method": "PUT",
        "path": "/items/7",
        "query": "expand=price&expand=tags&v=2",
        "auth": "Bearer shop-secret-1234",
        "x": "yes",
        "body": b'{"price":999}',
    }

    code, lines, _ = await contract(
        "check", "--config", str(tmp_path / "config.toml"), "--vendor", "gone", env=env
    )
    assert code == 1 and len(lines) == 1 and lines[0].startswith("FAIL gone /x gone.json")
    code, lines, err = await contract(
        "check", "--config", str(tmp_path / "config.toml"), "--vendor", "nope", env=env
    )
    assert (code, lines) == (2, []) and "--vendor: no vendor named 'nope'" in err


async def test_nothing_to_check_and_a_broken_config(tmp_path: Path) -> None:
    write(tmp_path, {"config.toml": '[vendors.a]\nbase_url = "http://127.0.0.1:9"\n'})
    code, lines, err = await contract("check", "--config", str(tmp_path / "config.toml"))
    assert (code, lines) == (1, []) and "nothing to check: no route of" in err
    write(
        tmp_path,
        {
            "routes/a.toml": 'vendor = "a"\n[[route]]\npath = "/x"\nexamples = ["missing.json"]\n',
        },
    )
    code, lines, err = await contract("check", "--config", str(tmp_path / "config.toml"))
    assert code == 1 and lines == []
    assert "routes/a.toml: route[1].examples[1]: file not found: " in err


async def test_the_sandbox_drifts_every_customer_answer_until_reset(vendor: Any) -> None:
    server = await vendor(create_app())
    async with aiohttp.ClientSession() as session:

        async def send(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with session.request(method, server.make_url(path), **kwargs) as resp:
                return resp.status, await resp.json()

        drift = {"rename": {"email": "email_address"}, "drop": ["address"], "set": {"created": "today"}}
        assert await send("POST", "/_sandbox/drift", json=drift) == (200, {"drift": drift})
        _, one = await send("GET", "/v1/customers/cus_0001")
        _, page = await send("GET", "/v1/customers?limit=2")
        _, made = await send("POST", "/v1/customers", json={"name": "Ada"})
        for customer in (one, *page["data"], made):
            assert "email" not in customer and "address" not in customer and customer["created"] == "today"
            assert "email_address" in customer
        for bad in ({"rename": {"a": 1}}, {"drop": "a"}, {"set": []}, {"other": 1}, [1]):
            status, body = await send("POST", "/_sandbox/drift", json=bad)
            assert status == 400 and body["error"]["type"] == "invalid_request_error", bad
        assert (await send("POST", "/_sandbox/reset"))[0] == 200
        _, one = await send("GET", "/v1/customers/cus_0001")
        assert isinstance(one["created"], int) and "email" in one and "address" in one


async def test_recorded_answers_are_verified_offline_against_the_schemas_as_they_are_now(
    vendor: Any, tmp_path: Path
) -> None:
    server = await vendor(create_app())
    config = str(shipped(tmp_path, str(server.make_url("/"))))
    fixtures = tmp_path / "fixtures"
    code, lines, err = await contract("check", "--config", config, "--record", str(fixtures))
    assert code == 0, (lines, err)
    kept = fixtures / "billing" / "billing" / "examples" / "customer.json"
    assert sorted(p.relative_to(fixtures).as_posix() for p in fixtures.rglob("*.json")) == [
        "billing/billing/examples/customer.json"  # the skipped POST was not sent, so not recorded
    ]
    recorded = orjson.loads(kept.read_bytes())
    assert recorded["request"] == {"method": "GET", "target": "/v1/customers/cus_0001"}
    assert recorded["route"] == {"method": "GET", "path": "/v1/customers/*"}
    assert recorded["status"] == 200 and recorded["body"]["id"] == "cus_0001"
    await server.close()  # verify never calls the vendor

    code, lines, err = await contract("verify", "--config", config, "--fixtures", str(fixtures))
    assert code == 0, (lines, err)
    assert lines[0].startswith(f"SKIP {CREATE}: no recorded answer in ")
    assert lines[1:] == [f"PASS {CUSTOMER}"]

    # The schema changes (a field the vendor never sends becomes required, a type changes): CI catches it.
    schema_file = tmp_path / "transforms" / "billing" / "customer.schema.json"
    schema = orjson.loads(schema_file.read_bytes())
    schema["required"].append("phone")
    schema["properties"]["created"] = {"type": "string"}
    schema_file.write_bytes(orjson.dumps(schema))
    code, lines, _ = await contract(
        "verify", "--config", config, "--fixtures", str(fixtures), "--vendor", "billing"
    )
    assert code == 1
    assert lines[1:] == [
        f'FAIL {CUSTOMER}: (root): "phone" is a required property',
        f'FAIL {CUSTOMER}: /created: {recorded["body"]["created"]} is not of type "string"',
    ]

    # An example that now sends another request must be recorded again.
    example_file = tmp_path / "transforms" / "billing" / "examples" / "customer.json"
    example_file.write_text(example_file.read_text().replace("cus_0001", "cus_0002"))
    code, lines, _ = await contract("verify", "--config", config, "--fixtures", str(fixtures))
    assert code == 1 and lines[1] == (
        f"FAIL {CUSTOMER}: recorded for GET /v1/customers/cus_0001, but the example now sends "
        "GET /v1/customers/cus_0002: record it again"
    )
    kept.write_text("{")
    code, lines, _ = await contract("verify", "--config", config, "--fixtures", str(fixtures))
    assert code == 1 and lines[1].startswith(f"FAIL {CUSTOMER}: ") and "is not valid JSON" in lines[1]

    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines, err = await contract("verify", "--config", config, "--fixtures", str(empty))
    assert code == 1 and all(line.startswith("SKIP ") for line in lines) and "nothing to verify" in err
    code, _, err = await contract("verify", "--config", config, "--fixtures", str(tmp_path / "nope"))
    assert code == 2 and "is not a folder" in err
