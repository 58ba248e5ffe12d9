"""Vendor credentials end to end: each auth type against a local vendor that checks what it receives.

The vendors here answer 401 unless the credentials are exactly right, so a 200 at the caller is the
proof; they also record what they saw, so forged caller values can be shown to be gone.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import CapturedLogs, vendor_block

VENDOR_TOKEN = "vendor-static-token-0123"


def checking_vendor(seen: list[web.Request], expect: dict[str, str]) -> web.Application:
    """200 with what it saw when every ``expect`` header (or ``?query`` key) has that exact value."""

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        body = await request.read()
        for name, want in expect.items():
            got = (
                request.query.getall(name[1:], [])
                if name.startswith("?")
                else request.headers.getall(name, [])
            )
            if got != [want]:
                return web.json_response({"error": f"bad {name}"}, status=401)
        return web.json_response({"ok": True, "path": request.raw_path, "body": body.decode()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize(
    ("auth", "expect"),
    [
        ('{ type = "bearer", token = "env:GW_VENDOR_TOKEN" }', {"Authorization": f"Bearer {VENDOR_TOKEN}"}),
        (
            '{ type = "header", name = "X-Api-Key", value = "env:GW_VENDOR_TOKEN" }',
            {"X-Api-Key": VENDOR_TOKEN},
        ),
        ('{ type = "query", name = "api_key", value = "env:GW_VENDOR_TOKEN" }', {"?api_key": VENDOR_TOKEN}),
        (
            '{ type = "basic", username = "acct_1", password = "env:GW_VENDOR_TOKEN" }',
            {"Authorization": "Basic " + base64.b64encode(f"acct_1:{VENDOR_TOKEN}".encode()).decode()},
        ),
    ],
    ids=["bearer", "header", "query", "basic"],
)
async def test_static_auth_reaches_a_checking_vendor_and_forgeries_are_replaced(
    gateway: Any, vendor: Any, monkeypatch: pytest.MonkeyPatch, auth: str, expect: dict[str, str]
) -> None:
    monkeypatch.setenv("GW_VENDOR_TOKEN", VENDOR_TOKEN)
    seen: list[web.Request] = []
    server = await vendor(checking_vendor(seen, expect))
    client = await gateway(vendor_block("acme", server, f"auth = {auth}"))
    plain = await client.get("/acme/v1/things?limit=2")
    assert plain.status == 200, await plain.text()
    forged = await client.get(
        "/acme/v1/things?api_key=forged&limit=2&api_key=forged-again",
        headers={"Authorization": "Bearer forged", "X-Api-Key": "forged"},
    )
    assert forged.status == 200, await forged.text()  # one value each: the caller's were replaced
    assert seen[-1].query.getall("limit") == ["2"]


# --- OAuth2 client credentials -------------------------------------------------------------------


@dataclass
class OAuthVendor:
    """A token endpoint and an API that accepts only tokens the endpoint issued and did not revoke."""

    client_id: str = "gw-client-id-42"
    client_secret: str = "gw-client-secret-s3cr3t"
    expires_in: float | None = 3600
    token_delay: float = 0.0
    token_status: int = 200
    token_body: bytes | None = None  # overrides the JSON answer
    always_401: bool = False
    fetches: int = 0
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    api_calls: list[dict[str, Any]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_route("*", "/api/{tail:.*}", self.api)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.fetches += 1
        form = await request.post()
        self.token_requests.append(
            {"form": dict(form), "authorization": request.headers.get("Authorization"), **request.headers}
        )
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        if self.token_body is not None:
            return web.Response(
                status=self.token_status, body=self.token_body, content_type="application/json"
            )
        if self.token_status != 200:
            return web.json_response({"error": "server_error"}, status=self.token_status)
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            cid, secret = str(form.get("client_id")), str(form.get("client_secret"))
        if form.get("grant_type") != "client_credentials" or (cid, secret) != (
            self.client_id,
            self.client_secret,
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"tok-{next(self.counter)}"
        self.valid.add(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)

    async def api(self, request: web.Request) -> web.Response:
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        self.api_calls.append({"auth": auth, "body": body, "path": request.raw_path})
        token = auth.removeprefix("Bearer ")
        if self.always_401 or not auth.startswith("Bearer ") or token not in self.valid:
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return web.json_response({"ok": True, "token": token, "size": len(body)})


def oauth_config(server: Any, extra: str = "", **auth: str) -> str:
    fields = {
        "type": '"oauth2_client_credentials"',
        "token_url": f'"{server.make_url("/oauth/token")}"',
        "client_id": '"env:GW_OAUTH_ID"',
        "client_secret": '"env:GW_OAUTH_SECRET"',
        **auth,
    }
    inline = ", ".join(f"{k} = {v}" for k, v in fields.items())
    return vendor_block("crm", server, f"auth = {{ {inline} }}\n{extra}")


@pytest.fixture
def oauth_env(monkeypatch: pytest.MonkeyPatch) -> OAuthVendor:
    fake = OAuthVendor()
    monkeypatch.setenv("GW_OAUTH_ID", fake.client_id)
    monkeypatch.setenv("GW_OAUTH_SECRET", fake.client_secret)
    return fake


@pytest.mark.parametrize("client_auth", ["basic", "body"])
async def test_oauth2_token_is_fetched_and_injected(
    gateway: Any, vendor: Any, oauth_env: OAuthVendor, client_auth: str
) -> None:
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server, client_auth=f'"{client_auth}"', scope='"crm.read crm.write"'))
    resp = await client.get("/crm/api/contacts", headers={"Authorization": "Bearer forged-by-caller"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["token"] == "tok-1"
    assert oauth_env.api_calls[0]["auth"] == "Bearer tok-1"
    (sent,) = oauth_env.token_requests
    assert sent["form"]["grant_type"] == "client_credentials"
    assert sent["form"]["scope"] == "crm.read crm.write"
    if client_auth == "basic":
        assert "client_secret" not in sent["form"] and sent["authorization"].startswith("Basic ")
    else:
        assert sent["form"]["client_secret"] == oauth_env.client_secret and sent["authorization"] is None
    again = await client.get("/crm/api/contacts")
    assert again.status == 200 and oauth_env.fetches == 1  # cached


async def test_thirty_concurrent_requests_share_one_token_fetch(
    gateway: Any, vendor: Any, oauth_env: OAuthVendor
) -> None:
    oauth_env.token_delay = 0.2  # every request arrives while the first fetch is still out
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server))
    responses = await asyncio.gather(*(client.get(f"/crm/api/c/{i}") for i in range(30)))
    assert [r.status for r in responses] == [200] * 30
    assert oauth_env.fetches == 1
    assert {c["auth"] for c in oauth_env.api_calls} == {"Bearer tok-1"}


async def test_an_expiring_token_is_refreshed(gateway: Any, vendor: Any, oauth_env: OAuthVendor) -> None:
    oauth_env.expires_in = 1
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server))
    assert (await (await client.get("/crm/api/a")).json())["token"] == "tok-1"
    assert (await (await client.get("/crm/api/a")).json())["token"] == "tok-1"
    await asyncio.sleep(1.0)  # past the refresh margin and the end of its life
    assert (await (await client.get("/crm/api/a")).json())["token"] == "tok-2"
    assert oauth_env.fetches == 2


async def test_a_token_without_expires_in_is_still_used(
    gateway: Any, vendor: Any, oauth_env: OAuthVendor
) -> None:
    oauth_env.expires_in = None
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server))
    for _ in range(3):
        assert (await client.get("/crm/api/a")).status == 200
    assert oauth_env.fetches == 1


async def test_vendor_401_fetches_a_new_token_and_retries_once_with_the_same_body(
    gateway: Any, vendor: Any, oauth_env: OAuthVendor, logs: CapturedLogs
) -> None:
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server))
    assert (await client.get("/crm/api/a")).status == 200
    oauth_env.valid.clear()  # the vendor revokes every token
    big = bytes(range(256)) * 1024  # 256 KiB, past the size the forwarder reads whole anyway
    resp = await client.post(
        "/crm/api/upload", data=big, headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json()) == {"ok": True, "token": "tok-2", "size": len(big)}
    assert oauth_env.fetches == 2
    assert [c["auth"] for c in oauth_env.api_calls[1:]] == ["Bearer tok-1", "Bearer tok-2"]
    assert oauth_env.api_calls[1]["body"] == big and oauth_env.api_calls[2]["body"] == big
    assert logs.access()[-1]["attempts"] == 2

    async def chunked() -> Any:
        for _ in range(4):
            yield b"x" * 100_000

    oauth_env.valid.clear()
    resp = await client.post("/crm/api/upload", data=chunked())  # no Content-Length: streamed by the caller
    assert (await resp.json()) == {"ok": True, "token": "tok-3", "size": 400_000}


async def test_a_second_401_passes_through(gateway: Any, vendor: Any, oauth_env: OAuthVendor) -> None:
    oauth_env.always_401 = True
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server))
    resp = await client.get("/crm/api/a")
    assert resp.status == 401
    assert resp.headers["Content-Type"].startswith("application/json")  # the vendor's own answer
    assert await resp.json() == {"error": "invalid_token"}
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert len(oauth_env.api_calls) == 2 and oauth_env.fetches == 2


async def test_concurrent_401s_discard_the_stale_token_once(
    gateway: Any, vendor: Any, oauth_env: OAuthVendor
) -> None:
    oauth_env.token_delay = 0.1
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server))
    assert (await client.get("/crm/api/a")).status == 200
    oauth_env.valid.clear()
    responses = await asyncio.gather(*(client.get(f"/crm/api/{i}") for i in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert oauth_env.fetches == 2  # twenty 401s with tok-1, one new token for all of them


@pytest.mark.parametrize(
    ("setup", "detail"),
    [
        ({"token_status": 500}, "answered 500 (server_error)"),
        ({"token_status": 401, "token_body": b'{"error":"invalid_client","error_description":"x"}'}, "401"),
        ({"token_body": b"<html>not json</html>"}, "JSON object"),
        ({"token_body": b'{"token_type":"Bearer"}'}, "access_token"),
        ({"token_body": b'{"access_token":"bad token\\r\\nX-Evil: 1"}'}, "access_token"),
        ({"token_body": b'{"access_token":"t","token_type":"mac"}'}, "not a bearer token"),
    ],
    ids=["500", "401", "not-json", "no-token", "header-injection", "not-bearer"],
)
async def test_token_endpoint_failures_are_502_problems(
    gateway: Any, vendor: Any, oauth_env: OAuthVendor, logs: CapturedLogs, setup: dict[str, Any], detail: str
) -> None:
    for name, value in setup.items():
        setattr(oauth_env, name, value)
    server = await vendor(oauth_env.app())
    client = await gateway(oauth_config(server))
    resp = await client.get("/crm/api/a")
    assert resp.status == 502
    assert resp.headers["Content-Type"] == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == 502 and detail in problem["detail"] and "token endpoint" in problem["detail"]
    assert oauth_env.api_calls == []  # the vendor was never called without credentials
    text = (await resp.read()).decode() + logs.getvalue().decode()
    assert oauth_env.client_secret not in text and oauth_env.client_id not in text


async def test_unreachable_token_endpoint_is_a_502(
    gateway: Any, vendor: Any, oauth_env: OAuthVendor, unused_tcp_port: int
) -> None:
    server = await vendor(oauth_env.app())
    block = oauth_config(server, token_url=f'"http://127.0.0.1:{unused_tcp_port}/token"')
    client = await gateway(block)
    resp = await client.get("/crm/api/a")
    assert resp.status == 502
    assert "unreachable" in (await resp.json())["detail"]


async def test_oauth2_against_the_sandbox_survives_revocation(
    gateway: Any, vendor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.sandbox import SANDBOX_STATE
    from gateway.sandbox import create_app as sandbox_app

    monkeypatch.setenv("SANDBOX_CLIENT_ID", "sandbox-client")
    monkeypatch.setenv("SANDBOX_CLIENT_SECRET", "sandbox-secret")
    app = sandbox_app(client_secret="sandbox-secret")
    server = await vendor(app)
    client = await gateway(
        vendor_block(
            "sandbox",
            server,
            f'auth = {{ type = "oauth2_client_credentials", token_url = "{server.make_url("/oauth/token")}", '
            'client_id = "env:SANDBOX_CLIENT_ID", client_secret = "env:SANDBOX_CLIENT_SECRET" }',
        )
    )
    assert (await client.get("/sandbox/v1/protected")).status == 200
    revoked = await client.post("/sandbox/_sandbox/revoke")
    assert revoked.status == 200
    assert (await client.get("/sandbox/v1/protected")).status == 200
    assert app[SANDBOX_STATE].tokens_issued == 2
