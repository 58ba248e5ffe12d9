"""Upstream TLS: verified by default, a per-vendor CA bundle (also for the OAuth2 token endpoint),
and ``verify = false`` only with a warning."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    cert_file, key_file = tmp_path / "vendor.pem", tmp_path / "vendor.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key_file), "-out", str(cert_file),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert_file, key_file


async def test_tls_is_verified_with_an_optional_ca_bundle(
    gateway: Any, aiohttp_server: Any, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TLS_ID", "tls-client")
    monkeypatch.setenv("GW_TLS_SECRET", "tls-secret")
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        issued.append("t")
        return web.json_response({"access_token": "tls-token", "expires_in": 60})

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/hello", hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    server = await aiohttp_server(app, ssl=context)
    base = server.make_url("/")
    assert base.scheme == "https"
    client = await gateway(
        f"""
        [vendors.strict]
        base_url = "{base}"
        [vendors.bundled]
        base_url = "{base}"
        tls = {{ ca_file = "{cert[0]}" }}
        [vendors.oauth]
        base_url = "{base}"
        tls = {{ ca_file = "{cert[0]}" }}
        auth = {{ type = "oauth2_client_credentials", token_url = "{base}token", client_id = "env:GW_TLS_ID", client_secret = "env:GW_TLS_SECRET" }}
        [vendors.careless]
        base_url = "{base}"
        tls = {{ verify = false }}
        """
    )
    strict = await client.get("/strict/hello")
    assert strict.status == 502
    assert (await strict.json())["detail"].startswith("vendor strict is unreachable")
    assert (await client.get("/bundled/hello")).status == 200
    oauth = await client.get("/oauth/hello")
    assert await oauth.json() == {"auth": "Bearer tls-token"}
    assert (await client.get("/careless/hello")).status == 200
    warnings = client.app.config.warnings
    assert [w.key for w in warnings] == ["vendors.careless.tls.verify"]
