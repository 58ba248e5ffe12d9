"""Who may use ``/_gateway/*`` (docs/http.md): health and ready answer everyone; the rest needs
``[gateway] admin_key`` once it is set, is closed (403 naming admin_key) with ``[clients]`` and no
admin key, and stays open for a loopback sidecar with neither; a client reads its own deliveries."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

ADMIN = "admin-key-0123456789"
KEY_A = "client-a-key-0123456789"
KEY_B = "client-b-key-0123456789"
ROUTES = {
    "v": """
        vendor = "v"
        expose = "all"
        [[route]]
        method = "POST"
        path = "/effects"
        delivery = "async"
        """
}
CLOSED = ("metrics", "dashboard", "status", "alerts", "deprecations", "nope")


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("GW_KEY_A", KEY_A)
    monkeypatch.setenv("GW_KEY_B", KEY_B)


@pytest.fixture
async def vendor_url(aiohttp_server: Any) -> str:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    server = await aiohttp_server(app)
    return str(server.make_url("/"))


def config(vendor_url: str, *, admin: bool, clients: bool) -> str:
    text = f'[vendors.v]\nbase_url = "{vendor_url}"\n'
    if admin:
        text = '[gateway]\nadmin_key = "env:GW_ADMIN_KEY"\n' + text
    if clients:
        text += '[clients.a]\nkey = "env:GW_KEY_A"\nallow = ["v"]\n[clients.b]\nkey = "env:GW_KEY_B"\nallow = ["v"]\n'
    return text


async def status(client: Any, path: str, key: str | None = None, *, bearer: bool = False) -> tuple[int, Any]:
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-Gateway-Key": key}
    async with client.get(path, headers=headers) as answer:
        body = await answer.json() if answer.content_type == "application/problem+json" else None
        return answer.status, body


async def delivery(client: Any, key: str | None) -> str:
    headers = {"X-Gateway-Key": key} if key else {}
    async with client.post("/v/effects", json={"n": 1}, headers=headers) as answer:
        assert answer.status == 202, await answer.text()
        return str(answer.headers["Location"])


async def test_with_an_admin_key_every_admin_endpoint_but_the_probes_needs_it(
    gateway: Any, vendor_url: str
) -> None:
    client = await gateway(config(vendor_url, admin=True, clients=True), routes=ROUTES)
    for open_endpoint in ("health", "ready"):
        assert (await status(client, f"/_gateway/{open_endpoint}"))[0] == 200
    for endpoint in CLOSED:
        path = f"/_gateway/{endpoint}"
        code, problem = await status(client, path)
        assert code == 401 and "needs the admin key ([gateway] admin_key)" in problem["detail"], endpoint
        code, problem = await status(client, path, KEY_A)
        assert code == 403 and problem["detail"] == (
            f"client 'a' may not use {path}: it needs the admin key ([gateway] admin_key)"
        )
        assert (await status(client, path, ADMIN + "x"))[0] == 401
        expected = 404 if endpoint == "nope" else 200  # an unknown endpoint is named only to the admin
        assert (await status(client, path, ADMIN))[0] == expected, endpoint
        assert (await status(client, path, ADMIN, bearer=True))[0] == expected, endpoint
    async with client.get("/_gateway/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert "gateway_requests_total" in await answer.text()
    assert (await status(client, "/v/x", ADMIN))[0] == 401  # the admin key is no client's key

    # A browser: the 401 asks for Basic, and the admin key as its password opens the dashboard and the
    # status figures the page fetches.
    async with client.get("/_gateway/dashboard") as answer:
        assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith(
            'Basic realm="gateway admin"'
        )

    def basic(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()}

    for path in ("/_gateway/dashboard", "/_gateway/status"):
        async with client.get(path, headers=basic(ADMIN)) as answer:
            assert answer.status == 200, path
    async with client.get("/_gateway/dashboard", headers=basic(KEY_A)) as answer:
        assert answer.status == 403

    location = await delivery(client, KEY_A)
    assert (await status(client, location))[0] == 401
    assert (await status(client, location, KEY_B))[0] == 404  # another client's: not there for it
    assert (await status(client, location, KEY_A))[0] == 200
    assert (await status(client, location, ADMIN))[0] == 200


async def test_with_clients_and_no_admin_key_the_admin_endpoints_are_closed(
    gateway: Any, vendor_url: str, write_config: Any
) -> None:
    client = await gateway(config(vendor_url, admin=False, clients=True), routes=ROUTES)
    assert (await status(client, "/_gateway/health"))[0] == 200
    for endpoint in CLOSED:
        for key in (None, KEY_A):
            code, problem = await status(client, f"/_gateway/{endpoint}", key)
            assert code == 403 and "no [gateway] admin_key is set; set admin_key" in problem["detail"]
            assert problem["type"].endswith("/forbidden") and problem["request_id"]
    location = await delivery(client, KEY_A)
    assert (await status(client, location, KEY_A))[0] == 200  # a client still reads its own
    assert (await status(client, location, KEY_B))[0] == 404
    (warning,) = [w for w in client.app.config.warnings if w.key == "gateway.admin_key"]
    assert "answer 403 to everyone" in warning.message
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "check", "--config", str(client.app.config.path)],
        capture_output=True,
        text=True,
    )
    assert (
        check.returncode == 0 and "warning: gateway.admin_key: is not set while [clients] is" in check.stderr
    )


async def test_a_loopback_sidecar_without_clients_keeps_them_open_unless_an_admin_key_is_set(
    gateway: Any, vendor_url: str
) -> None:
    sidecar = await gateway(config(vendor_url, admin=False, clients=False), routes=ROUTES)
    for endpoint in ("metrics", "dashboard", "deprecations"):
        assert (await status(sidecar, f"/_gateway/{endpoint}"))[0] == 200
    assert (await status(sidecar, await delivery(sidecar, None)))[0] == 200
    keyed = await gateway(config(vendor_url, admin=True, clients=False), routes=ROUTES)
    assert (await status(keyed, "/_gateway/metrics"))[0] == 401
    assert (await status(keyed, "/_gateway/metrics", ADMIN))[0] == 200
    location = await delivery(keyed, None)
    assert (await status(keyed, location))[0] == 401
    assert (await status(keyed, location, ADMIN))[0] == 200


def test_the_admin_key_must_not_be_a_clients_key(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GW_ADMIN_KEY", KEY_A)
    with pytest.raises(ConfigError) as info:
        load_config(write_config(config("https://v.example", admin=True, clients=True)))
    assert [str(p) for p in info.value.problems] == [
        "config.toml: gateway.admin_key: is the same key as clients.a; it needs its own"
    ]
