"""A real ``gateway run`` process with every kind of secret configured (env, files, AWS Secrets Manager
through moto's server, Vault's KV v2 and AppRole through tests/vault_server.py, a client certificate's
key): after successes, refusals and failures of every kind, its whole output (stdout and stderr) is
searched for each secret value, each OAuth2 and Vault token issued and each line of the private key,
and none is there. Also: what it says about auth at start."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.gateway_proc import GatewayProcess, free_port
from tests.moto_server import AWS_ENV, REGION, MotoServer
from tests.tls_certs import issue, write_ca
from tests.vault_server import VaultServer

SECRETS = {
    "GW_H_BEARER": "bearer-" + secrets.token_hex(12),
    "GW_H_QUERY": "query-" + secrets.token_hex(12),
    "GW_H_BASIC": "basic-" + secrets.token_hex(12),
    "GW_H_OAUTH_ID": "oauth-id-" + secrets.token_hex(12),
    "GW_H_KEY_BILLING": "billing-key-" + secrets.token_hex(12),
    "GW_H_KEY_REPORTS": "reports-key-" + secrets.token_hex(12),
    "GW_H_ADMIN": "admin-key-" + secrets.token_hex(12),
}
FILE_SECRETS = {
    "header.txt": "header-" + secrets.token_hex(12),
    "oauth.txt": "oauth-secret-" + secrets.token_hex(12),
    "vault-secret-id.txt": "vault-secret-id-" + secrets.token_hex(12),
}
MANAGED = {
    "aws": "aws-managed-" + secrets.token_hex(12),
    "vault": "vault-managed-" + secrets.token_hex(12),
    "role_id": "vault-role-id-" + secrets.token_hex(12),
}


class Vendor:
    """Checks every credential; issues random OAuth2 tokens and revokes them on request."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.valid: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_route("*", "/{tail:.*}", self.api)
        return app

    async def token(self, request: web.Request) -> web.Response:
        cid, _, secret = base64.b64decode(request.headers["Authorization"][6:]).decode().partition(":")
        if (cid, secret) != (SECRETS["GW_H_OAUTH_ID"], FILE_SECRETS["oauth.txt"]):
            return web.json_response(
                {"error": "invalid_client", "error_description": f"bad {secret}"}, status=401
            )
        token = secrets.token_urlsafe(24)
        self.issued.append(token)
        self.valid.add(token)
        return web.json_response({"access_token": token, "token_type": "bearer", "expires_in": 3600})

    async def api(self, request: web.Request) -> web.Response:
        vendor = request.match_info["tail"].split("/")[0]
        auth = request.headers.get("Authorization", "")
        ok = {
            "bearer": auth == f"Bearer {SECRETS['GW_H_BEARER']}",
            "header": request.headers.get("X-Api-Key") == FILE_SECRETS["header.txt"],
            "query": request.query.getall("key", []) == [SECRETS["GW_H_QUERY"]],
            "basic": auth == "Basic " + base64.b64encode(f"u:{SECRETS['GW_H_BASIC']}".encode()).decode(),
            "oauth": auth.removeprefix("Bearer ") in self.valid,
            "awssm": auth == f"Bearer {MANAGED['aws']}",
            "vaulted": request.headers.get("X-Api-Key") == MANAGED["vault"],
        }.get(vendor, True)
        if request.query.get("revoke"):
            self.valid.clear()
        if not ok:
            # Vendors sometimes echo what they got; the gateway passes their answer on, but never logs it.
            return web.json_response({"error": "unauthorized", "got": auth}, status=401)
        return web.json_response({"ok": True})


async def test_no_secret_or_token_ever_reaches_the_log(
    tmp_path: Path, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**SECRETS, **AWS_ENV, "GW_H_ROLE_ID": MANAGED["role_id"]}.items():
        monkeypatch.setenv(name, value)
    moto = MotoServer(tmp_path)
    moto.client().create_secret(Name="hygiene/aws", SecretString=json.dumps({"token": MANAGED["aws"]}))
    vault = VaultServer(
        root_token="root-" + secrets.token_hex(12),
        role_id=MANAGED["role_id"],
        secret_id=FILE_SECRETS["vault-secret-id.txt"],
    )
    vault.put("secret/hygiene", {"key": MANAGED["vault"]})
    ca = trustme.CA()
    client_cert = issue(ca, tmp_path / "certs", "client")
    ca_file = write_ca(ca, tmp_path / "certs" / "ca.pem")
    for name, value in FILE_SECRETS.items():
        (tmp_path / name).write_text(value + "\n")
    (tmp_path / "wrong.txt").write_text("wrong-oauth-secret-value\n")
    fake = Vendor()
    server = await aiohttp_server(fake.app())
    base = str(server.make_url("/"))
    dead = f"http://127.0.0.1:{free_port()}/"
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [gateway]
            admin_key = "env:GW_H_ADMIN"
            [secrets.aws]
            region = "{REGION}"
            endpoint_url = "{moto.url}"
            [secrets.vault]
            address = "{vault.address}"
            approle = {{ role_id = "env:GW_H_ROLE_ID", secret_id = "file:vault-secret-id.txt" }}

            [clients.billing]
            key = "env:GW_H_KEY_BILLING"
            allow = ["bearer", "header", "query", "basic", "oauth", "badoauth", "deadquery", "awssm", "vaulted", "deadmtls"]
            [clients.reports]
            key = "env:GW_H_KEY_REPORTS"
            allow = ["bearer:GET /bearer/reports/*"]

            [vendors.bearer]
            base_url = "{base}"
            auth = {{ type = "bearer", token = "env:GW_H_BEARER" }}
            [vendors.header]
            base_url = "{base}"
            auth = {{ type = "header", name = "X-Api-Key", value = "file:header.txt" }}
            [vendors.query]
            base_url = "{base}"
            auth = {{ type = "query", name = "key", value = "env:GW_H_QUERY" }}
            [vendors.basic]
            base_url = "{base}"
            auth = {{ type = "basic", username = "u", password = "env:GW_H_BASIC" }}
            [vendors.oauth]
            base_url = "{base}"
            auth = {{ type = "oauth2_client_credentials", token_url = "{base}oauth/token", client_id = "env:GW_H_OAUTH_ID", client_secret = "file:oauth.txt" }}
            [vendors.badoauth]
            base_url = "{base}"
            auth = {{ type = "oauth2_client_credentials", token_url = "{base}oauth/token", client_id = "env:GW_H_OAUTH_ID", client_secret = "file:wrong.txt" }}
            [vendors.deadquery]
            base_url = "{dead}"
            tls = {{ verify = false }}
            auth = {{ type = "query", name = "key", value = "env:GW_H_QUERY" }}
            [vendors.awssm]
            base_url = "{base}"
            auth = {{ type = "bearer", token = "aws-sm:hygiene/aws#token" }}
            [vendors.vaulted]
            base_url = "{base}"
            auth = {{ type = "header", name = "X-Api-Key", value = "vault:secret/hygiene#key" }}
            [vendors.deadmtls]
            base_url = "{dead.replace("http://", "https://")}"
            tls = {{ ca_file = "{ca_file}", cert_file = "{client_cert.cert}", key_file = "{client_cert.key}" }}
            auth = {{ type = "bearer", token = "vault:secret/hygiene#key" }}
            """
        )
    )
    proc = GatewayProcess(config)
    try:
        await asyncio.to_thread(proc.wait_ready)
        billing = {"X-Gateway-Key": SECRETS["GW_H_KEY_BILLING"]}
        async with aiohttp.ClientSession(proc.url) as http:

            async def call(method: str, path: str, headers: dict[str, str] | None = None) -> int:
                async with http.request(method, path, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            for vendor in ("bearer", "header", "query", "basic", "oauth", "awssm", "vaulted"):
                assert await call("GET", f"/{vendor}/{vendor}/x?key=forged", billing) == 200, vendor
            assert await call("GET", "/deadmtls/x", billing) == 502
            assert await call("GET", "/oauth/oauth/x?revoke=1", billing) == 200
            assert await call("GET", "/oauth/oauth/x", billing) == 200  # 401, new token, retried
            assert await call("GET", "/badoauth/x", billing) == 502
            assert await call("GET", "/deadquery/x", billing) == 502
            bearer_key = {"Authorization": f"Bearer {SECRETS['GW_H_KEY_REPORTS']}"}
            assert await call("GET", "/bearer/bearer/reports/q1", bearer_key) == 200
            assert await call("POST", "/bearer/bearer/reports/q1", bearer_key) == 403
            assert await call("GET", "/bearer/x") == 401
            assert await call("GET", "/bearer/x", {"X-Gateway-Key": SECRETS["GW_H_KEY_BILLING"] + "x"}) == 401
            assert await call("GET", "/nosuch/x", billing) == 404
            admin = {"Authorization": f"Bearer {SECRETS['GW_H_ADMIN']}"}
            assert await call("GET", "/_gateway/metrics", admin) == 200
            assert (
                await call("GET", "/_gateway/dashboard", {"X-Gateway-Key": SECRETS["GW_H_ADMIN"][:-1]}) == 401
            )
            assert await call("GET", "/_gateway/metrics", billing) == 403
        os.killpg(proc.proc.pid, signal.SIGTERM)
        await asyncio.to_thread(proc.proc.wait, 20)
    finally:
        proc.stop()
        moto.stop()
        vault.close()
    output = proc.log_path.read_text(errors="replace")
    assert '"event":"stopped"' in output  # the whole run, start to finish, was captured
    assert len(vault.issued) == 1  # the AppRole login's token, read once at start
    key_lines = [
        line for line in client_cert.key.read_text().splitlines() if line and "PRIVATE KEY" not in line
    ]
    assert len(fake.issued) == 2
    basic_header = base64.b64encode(f"u:{SECRETS['GW_H_BASIC']}".encode()).decode()
    for value in [
        *SECRETS.values(),
        *FILE_SECRETS.values(),
        *fake.issued,
        basic_header,
        "wrong-oauth-secret",
        *MANAGED.values(),
        *vault.issued,
        AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        *key_lines,
    ]:
        assert value not in output, f"a secret is in the log: {value[:8]}..."
    assert '"event":"client_auth"' in output and '"mode":"key"' in output
    assert '"key":"vendors.deadquery.tls.verify"' in output and '"level":"warning"' in output


async def test_without_clients_the_startup_log_says_callers_are_not_authenticated(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[vendors.a]\nbase_url = "http://127.0.0.1:9"\n')
    proc = GatewayProcess(config)
    try:
        await asyncio.to_thread(proc.wait_ready)
    finally:
        proc.stop()
    output = proc.log_path.read_text(errors="replace")
    assert '"event":"client_auth"' in output and '"mode":"off"' in output
    assert "callers are not authenticated" in output
