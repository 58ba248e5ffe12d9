"""The sandbox vendor, seen from a client: statuses, headers, bodies and the call counters tests rely on."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from yarl import URL

from gateway.sandbox import MAX_BIG_BYTES, SANDBOX_STATE, SEED_CUSTOMERS, SandboxState, create_app, start

ROOT = Path(__file__).resolve().parents[2]
Client = TestClient[web.Request, web.Application]
SandboxFactory = Callable[..., Awaitable[Client]]
CUSTOMER = {
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "address": {"line1": "12 Analytical Row", "city": "London", "postal_code": "N1 9GU", "country": "GB"},
    "metadata": {"crm_id": "42"},
}


@pytest.fixture
def sandbox(aiohttp_client: Callable[..., Awaitable[Client]]) -> SandboxFactory:
    """Start a sandbox app (keyword arguments go to `create_app`) and return a client for it."""

    async def make(**kwargs: Any) -> Client:
        return await aiohttp_client(create_app(**kwargs))

    return make


def state(client: Client) -> SandboxState:
    return client.app[SANDBOX_STATE]


async def error_type(response: aiohttp.ClientResponse) -> str:
    body = await response.json()
    assert set(body["error"]) >= {"type", "message"}
    return str(body["error"]["type"])


# --- customers ----------------------------------------------------------------------------------


async def test_create_customer_returns_stripe_like_object(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    before = time.time()
    response = await client.post("/v1/customers", json=CUSTOMER)
    assert response.status == 201
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["id"].startswith("cus_") and body["object"] == "customer"
    assert (body["name"], body["email"], body["metadata"]) == (
        "Ada Lovelace",
        "ada@example.com",
        {"crm_id": "42"},
    )
    assert body["address"]["city"] == "London" and body["address"]["line2"] is None
    assert int(before) <= body["created"] <= time.time()
    fetched = await client.get(f"/v1/customers/{body['id']}")
    assert fetched.status == 200 and await fetched.json() == body
    assert state(client).calls["POST /v1/customers"] == 1
    assert state(client).calls["GET /v1/customers/{id}"] == 1


async def test_idempotent_replay_and_conflicting_body(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    headers = {"Idempotency-Key": "order-7"}
    first = await client.post("/v1/customers", json=CUSTOMER, headers=headers)
    replay = await client.post("/v1/customers", json=CUSTOMER, headers=headers)
    assert (first.status, replay.status) == (201, 201)
    assert "Idempotent-Replayed" not in first.headers
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert await replay.read() == await first.read()
    assert len(state(client).customers) == SEED_CUSTOMERS + 1

    other = await client.post("/v1/customers", json={**CUSTOMER, "name": "Grace"}, headers=headers)
    assert other.status == 400
    assert await error_type(other) == "idempotency_error"
    assert len(state(client).customers) == SEED_CUSTOMERS + 1
    assert state(client).calls["POST /v1/customers"] == 3


async def test_failed_validation_is_not_remembered_under_the_key(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    headers = {"Idempotency-Key": "k1"}
    bad = await client.post("/v1/customers", json={"email": "x@example.com"}, headers=headers)
    assert bad.status == 400
    good = await client.post("/v1/customers", json=CUSTOMER, headers=headers)
    assert good.status == 201 and "Idempotent-Replayed" not in good.headers


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'{"email": "no-name@example.com"}',
        b'{"name": ""}',
        b'{"name": 7}',
        b'{"name": "A", "email": 3}',
        b'{"name": "A", "address": "Main St"}',
        b'{"name": "A", "metadata": {"nested": {"a": 1}}}',
    ],
)
async def test_bad_customer_bodies_are_400(sandbox: SandboxFactory, body: bytes) -> None:
    client = await sandbox()
    response = await client.post("/v1/customers", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert await error_type(response) == "invalid_request_error"
    assert len(state(client).customers) == SEED_CUSTOMERS


async def test_get_and_delete_customer(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    assert (await client.get("/v1/customers/cus_0001")).status == 200
    deleted = await client.delete("/v1/customers/cus_0001")
    assert deleted.status == 200
    assert await deleted.json() == {"id": "cus_0001", "object": "customer", "deleted": True}
    for response in (
        await client.get("/v1/customers/cus_0001"),
        await client.delete("/v1/customers/cus_0001"),
    ):
        assert response.status == 404
        assert await error_type(response) == "invalid_request_error"


async def test_pagination_walk_covers_every_customer_once(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    seen: list[str] = []
    params: dict[str, str] = {"limit": "7"}
    while True:
        response = await client.get("/v1/customers", params=params)
        assert response.status == 200
        page = await response.json()
        assert page["object"] == "list" and page["url"] == "/v1/customers"
        assert len(page["data"]) <= 7
        seen += [customer["id"] for customer in page["data"]]
        if not page["has_more"]:
            break
        params["starting_after"] = page["data"][-1]["id"]
    assert len(seen) == len(set(seen)) == SEED_CUSTOMERS
    assert set(seen) == set(state(client).customers)
    default = await (await client.get("/v1/customers")).json()
    assert len(default["data"]) == 10 and default["has_more"] is True


async def test_new_customers_are_listed_first(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    created = await (await client.post("/v1/customers", json={"name": "Newest"})).json()
    page = await (await client.get("/v1/customers?limit=1")).json()
    assert page["data"] == [created]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=ten", "limit=-1", "starting_after=cus_nope"]
)
async def test_bad_list_parameters_are_400(sandbox: SandboxFactory, query: str) -> None:
    client = await sandbox()
    response = await client.get(f"/v1/customers?{query}")
    assert response.status == 400
    assert await error_type(response) == "invalid_request_error"


async def test_legacy_list_announces_deprecation_and_sunset(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    response = await client.get("/v1/legacy/customers?limit=2")
    assert response.status == 200
    assert response.headers["Deprecation"] == "@1735689600"
    assert response.headers["Sunset"] == "Wed, 31 Dec 2025 23:59:59 GMT"
    body = await response.json()
    assert body["url"] == "/v1/legacy/customers" and len(body["data"]) == 2
    current = await client.get("/v1/customers")
    assert "Deprecation" not in current.headers and "Sunset" not in current.headers


# --- misbehaving endpoints ----------------------------------------------------------------------


async def test_limited_answers_429_with_retry_after_then_recovers(sandbox: SandboxFactory) -> None:
    client = await sandbox(rate_limit_requests=3, rate_limit_window_seconds=0.3)
    statuses = [(await client.get("/v1/limited")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = await client.get("/v1/limited")
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert await error_type(limited) == "rate_limit_error"
    await asyncio.sleep(0.35)
    assert (await client.get("/v1/limited")).status == 200
    assert state(client).calls["GET /v1/limited"] == 5


async def test_flaky_fails_n_times_per_key_then_succeeds(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    for attempt in (1, 2):
        response = await client.get("/v1/flaky?fail=2&key=a")
        assert response.status == 503
        assert response.headers["Retry-After"] == "0"
        assert await error_type(response) == "api_error", attempt
    ok = await client.post("/v1/flaky?fail=2&key=a")
    assert ok.status == 200 and await ok.json() == {"attempt": 3}
    assert (await client.get("/v1/flaky?fail=2&key=b")).status == 503  # keys are independent
    assert state(client).calls["GET /v1/flaky"] == 3 and state(client).calls["POST /v1/flaky"] == 1


async def test_flaky_without_fail_fails_every_third_call(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    statuses = [(await client.get("/v1/flaky")).status for _ in range(6)]
    assert statuses == [200, 200, 503, 200, 200, 503]


async def test_reset_forgets_counters_flaky_state_and_window_but_not_customers(
    sandbox: SandboxFactory,
) -> None:
    client = await sandbox(rate_limit_requests=1, rate_limit_window_seconds=60)
    await client.get("/v1/flaky?fail=1&key=r")
    await client.get("/v1/limited")
    assert (await client.get("/v1/limited")).status == 429
    await client.post("/v1/customers", json={"name": "Kept"})
    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["calls"] == {"GET /v1/flaky": 1, "GET /v1/limited": 2, "POST /v1/customers": 1}
    assert stats["customers"] == SEED_CUSTOMERS + 1

    assert (await client.post("/_sandbox/reset")).status == 200
    assert (await (await client.get("/_sandbox/stats")).json())["calls"] == {}
    assert (await client.get("/v1/flaky?fail=1&key=r")).status == 503  # attempt 1 again
    assert (await client.get("/v1/limited")).status == 200
    assert len(state(client).customers) == SEED_CUSTOMERS + 1


async def test_slow_waits_and_rejects_bad_seconds(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    started = time.monotonic()
    response = await client.get("/v1/slow?seconds=0.2")
    assert response.status == 200 and await response.json() == {"slept": 0.2}
    assert time.monotonic() - started >= 0.2
    for bad in ("soon", "-1", "nan"):
        response = await client.get(f"/v1/slow?seconds={bad}")
        assert response.status == 400, bad


async def test_big_streams_exact_deterministic_bytes(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    size = 3 * 65536 + 123
    response = await client.get(f"/v1/big?bytes={size}")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(size)
    received = 0
    async for chunk in response.content.iter_chunked(10_000):
        assert chunk == bytes((received + i) % 256 for i in range(len(chunk)))
        received += len(chunk)
    assert received == size

    empty = await client.get("/v1/big?bytes=0")
    assert empty.status == 200 and await empty.read() == b""
    capped = await client.head("/v1/big?bytes=999999999999")
    assert capped.status == 200 and capped.headers["Content-Length"] == str(MAX_BIG_BYTES)
    assert (await client.get("/v1/big?bytes=lots")).status == 400


async def test_echo_returns_raw_path_query_headers_and_body(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    url = URL("/v1/echo/a%2Fb/%7Ex?q=%20a+b&q=2&empty", encoded=True)
    headers = CIMultiDict([("X-Multi", "one"), ("X-Multi", "two"), ("Idempotency-Key", '"abc"')])
    response = await client.patch(url, data=b"hello \xe2\x9c\x93", headers=headers)
    assert response.status == 200
    body = await response.json()
    assert body["method"] == "PATCH"
    assert body["path"] == "/v1/echo/a%2Fb/%7Ex"
    assert body["query"] == "q=%20a+b&q=2&empty"
    assert body["headers"]["X-Multi"] == "one, two"
    assert body["headers"]["Idempotency-Key"] == '"abc"'
    assert body["headers"]["Content-Length"] == "9"
    assert (body["body"], body["body_base64"]) == ("hello \u2713", False)
    assert state(client).calls["PATCH /v1/echo/{tail}"] == 1


async def test_echo_base64_encodes_binary_bodies(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    payload = bytes([0xFF, 0x00, 0xFE])
    body = await (await client.post("/v1/echo/", data=payload)).json()
    assert body["body_base64"] is True and base64.b64decode(body["body"]) == payload


# --- OAuth2 -------------------------------------------------------------------------------------


async def test_oauth_token_protected_and_revoke(sandbox: SandboxFactory) -> None:
    client = await sandbox(client_id="cid", client_secret="s3cret", token_ttl_seconds=120)
    form = {"grant_type": "client_credentials", "scope": "customers:read"}
    basic = {"Authorization": aiohttp.encode_basic_auth("cid", "s3cret")}
    response = await client.post("/oauth/token", data=form, headers=basic)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    token = await response.json()
    assert (
        token["token_type"] == "Bearer" and token["expires_in"] == 120 and token["scope"] == "customers:read"
    )
    assert len(token["access_token"]) >= 16

    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    ok = await client.get("/v1/protected", headers=bearer)
    assert ok.status == 200 and (await ok.json())["scope"] == "customers:read"

    assert (await client.post("/_sandbox/revoke")).status == 200
    revoked = await client.get("/v1/protected", headers=bearer)
    assert revoked.status == 401
    assert revoked.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert await error_type(revoked) == "authentication_error"

    # Credentials in the form work as well, and every fetch is counted.
    form_auth = {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "s3cret"}
    again = await client.post("/oauth/token", data=form_auth)
    assert again.status == 200 and (await again.json())["access_token"] != token["access_token"]
    assert state(client).calls["POST /oauth/token"] == 2 and state(client).tokens_issued == 2


async def test_the_client_secret_is_made_at_start_and_renewed_on_demand(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    made = state(client).client_secret
    assert len(made) >= 32 and made != (await sandbox()).app[SANDBOX_STATE].client_secret
    form = {"grant_type": "client_credentials"}

    async def token_status(secret: str) -> int:
        basic = {"Authorization": aiohttp.encode_basic_auth("sandbox-client", secret)}
        return (await client.post("/oauth/token", data=form, headers=basic)).status

    assert await token_status(made) == 200
    response = await client.post("/_sandbox/oauth/secret")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    renewed = (await response.text()).strip()
    assert renewed != made and renewed == state(client).client_secret
    assert await token_status(renewed) == 200
    assert await token_status(made) == 401  # the old one stops working


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, ("sandbox-client", "wrong"), 401, "invalid_client"),
        (
            {"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
            None,
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "password"}, ("sandbox-client", "sandbox-secret"), 400, "unsupported_grant_type"),
        ({}, ("sandbox-client", "sandbox-secret"), 400, "invalid_request"),
    ],
)
async def test_oauth_token_errors(
    sandbox: SandboxFactory, form: dict[str, str], auth: tuple[str, str] | None, status: int, error: str
) -> None:
    client = await sandbox(client_secret="sandbox-secret")
    headers = {"Authorization": aiohttp.encode_basic_auth(*auth)} if auth else {}
    response = await client.post("/oauth/token", data=form, headers=headers)
    assert response.status == status
    assert (await response.json())["error"] == error
    assert state(client).tokens_issued == 0 and state(client).calls["POST /oauth/token"] == 1


async def test_oauth_token_rejects_malformed_basic_credentials(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    form = {"grant_type": "client_credentials"}
    response = await client.post("/oauth/token", data=form, headers={"Authorization": "Basic !!!"})
    assert response.status == 401 and (await response.json())["error"] == "invalid_client"


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic c2FuZGJveDpzZWNyZXQ=", "Bearer"])
async def test_protected_rejects_missing_or_unknown_tokens(
    sandbox: SandboxFactory, authorization: str | None
) -> None:
    client = await sandbox()
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get("/v1/protected", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_expired_tokens_are_rejected(sandbox: SandboxFactory) -> None:
    client = await sandbox(client_secret="sandbox-secret", token_ttl_seconds=0)
    form = {
        "grant_type": "client_credentials",
        "client_id": "sandbox-client",
        "client_secret": "sandbox-secret",
    }
    token = await (await client.post("/oauth/token", data=form)).json()
    assert token["expires_in"] == 0
    response = await client.get("/v1/protected", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert response.status == 401


# --- routing errors, serving --------------------------------------------------------------------


async def test_unknown_path_and_method_are_json_errors(sandbox: SandboxFactory) -> None:
    client = await sandbox()
    missing = await client.get("/v2/nothing-here")
    assert missing.status == 404 and missing.content_type == "application/json"
    assert await error_type(missing) == "invalid_request_error"
    wrong_method = await client.put("/v1/customers")
    assert wrong_method.status == 405 and "POST" in wrong_method.headers["Allow"]
    assert await error_type(wrong_method) == "invalid_request_error"
    assert sum(state(client).calls.values()) == 0


async def test_start_serves_and_cleanup_does_not_wait_for_abandoned_slow_calls() -> None:
    runner = await start("127.0.0.1", 0, rate_limit_requests=1)
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
            async with session.get("/v1/limited") as response:
                assert response.status == 200
            async with session.get("/v1/limited") as response:
                assert response.status == 429
            with pytest.raises(asyncio.TimeoutError):
                await session.get("/v1/slow?seconds=30", timeout=aiohttp.ClientTimeout(total=0.2))
    finally:
        started = time.monotonic()
        await runner.cleanup()
    assert time.monotonic() - started < 1.5


async def test_big_tolerates_a_caller_hanging_up_mid_stream(caplog: pytest.LogCaptureFixture) -> None:
    runner = await start("127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
            async with session.get(f"/v1/big?bytes={MAX_BIG_BYTES}") as response:
                assert len(await response.content.readexactly(100_000)) == 100_000
                response.close()
            await asyncio.sleep(0.1)
            async with session.get("/v1/big?bytes=10") as response:
                assert await response.read() == bytes(range(10))
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_logs_where_it_listens_and_exits_cleanly_on_signal(sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from gateway.sandbox import run; run('127.0.0.1', 0)",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), 10)).decode()
        assert line.startswith("sandbox vendor listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/customers?limit=1") as response:
            assert response.status == 200
        process.send_signal(sig)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert await process.stderr.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
