"""Secrets from secret managers, end to end: AWS Secrets Manager is moto's server mode (a real HTTP
endpoint on loopback, tests/moto_server.py) read through aiobotocore; Vault is a small real HTTP server
answering the KV v2 read and AppRole login endpoints of Vault's documented API (tests/vault_server.py:
no Vault server can be installed here). Each test checks what the vendor received."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import ConfigError, OAuth2ClientCredentials, load_config
from gateway.config import secrets as secret_refs
from gateway.http.app import reload
from gateway.upstream.secret_managers import refresh
from tests.moto_server import AWS_ENV, REGION, MotoServer
from tests.vault_server import VaultServer


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    yield
    secret_refs._cache.clear()  # what one test read is not another's


@pytest.fixture
def vault() -> Iterator[VaultServer]:
    server = VaultServer(
        root_token="root-" + secrets.token_hex(8), role_id="role-gw", secret_id="sid-" + secrets.token_hex(8)
    )
    yield server
    server.close()


@pytest.fixture
async def vendor(aiohttp_server: Any) -> Any:
    """Answers with the credentials it got."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {"authorization": request.headers.get("Authorization"), "key": request.headers.get("X-Api-Key")}
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    return await aiohttp_server(app)


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


async def until(check: Any, seconds: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def test_aws_secrets_reach_the_vendor_and_a_rotation_is_picked_up_without_a_restart(
    gateway: Any, moto: MotoServer, vendor: Any, logs: Any
) -> None:
    aws = moto.client()
    stripe, hub = unique("prod/stripe"), unique("prod/hub")
    aws.create_secret(
        Name=stripe, SecretString=json.dumps({"api_key": "sk_live_first_0123456789", "other": "x"})
    )
    aws.create_secret(Name=hub, SecretString="hub-key-first-0123456789")
    client = await gateway(
        f"""
        [secrets]
        refresh_seconds = 0.3
        [secrets.aws]
        region = "{REGION}"
        endpoint_url = "{moto.url}"
        [vendors.stripe]
        base_url = "{vendor.make_url("/")}"
        auth = {{ type = "bearer", token = "aws-sm:{stripe}#api_key" }}
        [vendors.hub]
        base_url = "{vendor.make_url("/")}"
        auth = {{ type = "header", name = "X-Api-Key", value = "aws-sm:{hub}" }}
        """
    )
    assert (await (await client.get("/stripe/x")).json())[
        "authorization"
    ] == "Bearer sk_live_first_0123456789"
    assert (await (await client.get("/hub/x")).json())["key"] == "hub-key-first-0123456789"
    assert client.app.config.secrets.managed == tuple(sorted([f"aws-sm:{stripe}#api_key", f"aws-sm:{hub}"]))

    stop = asyncio.Event()
    app = client.app
    refresher = asyncio.create_task(
        refresh(lambda: app.live.runtime.config, lambda why: reload(app, reason=why), app.logger, stop=stop)
    )
    try:
        aws.put_secret_value(
            SecretId=stripe, SecretString=json.dumps({"api_key": "sk_live_second_0123456789"})
        )

        async def rotated() -> bool:
            answer = await (await client.get("/stripe/x")).json()
            return bool(answer["authorization"] == "Bearer sk_live_second_0123456789")

        await until(rotated)
        reloads = [r for r in logs.records() if r["event"] == "config_reloaded"]
        assert reloads and reloads[0]["reason"] == f"secret rotated: aws-sm:{stripe}"

        aws.delete_secret(SecretId=hub, ForceDeleteWithoutRecovery=True)  # the next reads fail

        async def warned() -> bool:
            return any(
                r["event"] == "secret_refresh_failed" and r["secret"] == f"aws-sm:{hub}"
                for r in logs.records()
            )

        await until(warned)
        failed = next(r for r in logs.records() if r["event"] == "secret_refresh_failed")
        assert failed["level"] == "warning" and "ResourceNotFoundException" in failed["error"]
        assert (await (await client.get("/hub/x")).json())["key"] == "hub-key-first-0123456789"  # kept
    finally:
        stop.set()
        await refresher


def test_a_secret_that_cannot_be_read_stops_the_load_and_says_why(
    write_config: Any, moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    aws = moto.client()
    name = unique("prod/crm")
    aws.create_secret(Name=name, SecretString=json.dumps({"token": "crm-token-0123456789"}))
    path = write_config(
        f"""
        [secrets.aws]
        region = "{REGION}"
        endpoint_url = "{moto.url}"
        [vendors.a]
        base_url = "https://a.example"
        auth = {{ type = "bearer", token = "aws-sm:{name}#password" }}
        [vendors.b]
        base_url = "https://b.example"
        auth = {{ type = "bearer", token = "aws-sm:nothing/here" }}
        [clients.svc]
        key = "aws-sm:{name}"
        allow = ["a"]
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = [str(p) for p in info.value.problems]
    assert problems == [
        f"config.toml: vendors.a.auth.token: aws-sm:{name}#password: the secret has no field 'password' (its fields: token)",
        "config.toml: vendors.b.auth.token: cannot read aws-sm:nothing/here: AWS Secrets Manager said "
        "ResourceNotFoundException: Secrets Manager can't find the specified secret.",
    ]
    assert "crm-token" not in "".join(problems)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == problems


async def test_vault_kv2_with_a_token_and_with_approle(
    gateway: Any, vault: VaultServer, vendor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: Any
) -> None:
    root = next(iter(vault.tokens))
    monkeypatch.setenv("GW_VAULT_TOKEN", root)
    monkeypatch.setenv("GW_VAULT_SECRET_ID", vault.approle[1])
    (tmp_path / "role-id").write_text(vault.approle[0] + "\n")
    vault.put("secret/stripe", {"api_key": "sk_vault_first_0123456789"})
    vault.put("kv/team/hub", {"key": "hub-vault-0123456789", "unused": "u"})
    by_token = await gateway(
        f"""
        [secrets.vault]
        address = "{vault.address}"
        token = "env:GW_VAULT_TOKEN"
        [vendors.stripe]
        base_url = "{vendor.make_url("/")}"
        auth = {{ type = "bearer", token = "vault:secret/stripe#api_key" }}
        """
    )
    assert (await (await by_token.get("/stripe/x")).json())[
        "authorization"
    ] == "Bearer sk_vault_first_0123456789"
    assert vault.issued == []  # the token was used as it is
    secret_refs._cache.clear()
    by_approle = await gateway(
        f"""
        [secrets]
        refresh_seconds = 0.3
        [secrets.vault]
        address = "{vault.address}"
        approle = {{ role_id = "file:role-id", secret_id = "env:GW_VAULT_SECRET_ID" }}
        [vendors.stripe]
        base_url = "{vendor.make_url("/")}"
        auth = {{ type = "bearer", token = "vault:secret/stripe#api_key" }}
        [vendors.hub]
        base_url = "{vendor.make_url("/")}"
        auth = {{ type = "header", name = "X-Api-Key", value = "vault:kv/team/hub#key" }}
        """
    )
    assert (await (await by_approle.get("/hub/x")).json())["key"] == "hub-vault-0123456789"
    assert len(vault.issued) == 1 and sorted(vault.reads[-2:]) == ["kv/team/hub", "secret/stripe"]

    app = by_approle.app
    stop = asyncio.Event()
    refresher = asyncio.create_task(
        refresh(lambda: app.live.runtime.config, lambda why: reload(app, reason=why), app.logger, stop=stop)
    )
    try:
        vault.put("secret/stripe", {"api_key": "sk_vault_second_0123456789"})

        async def rotated() -> bool:
            answer = await (await by_approle.get("/stripe/x")).json()
            return bool(answer["authorization"] == "Bearer sk_vault_second_0123456789")

        await until(rotated)
        assert len(vault.issued) >= 2  # a fresh AppRole token for each round of reads
    finally:
        stop.set()
        await refresher
    output = logs.getvalue().decode()
    for value in (root, vault.approle[1], *vault.issued, "sk_vault_first", "sk_vault_second", "hub-vault"):
        assert value not in output


def test_vault_refusals_are_config_problems(
    write_config: Any, vault: VaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GW_VAULT_TOKEN", "not-a-token")
    monkeypatch.setenv("GW_VAULT_SECRET_ID", "wrong-secret-id")
    vault.put("secret/a", {"k": "v-0123456789"})
    base = """
        [vendors.a]
        base_url = "https://a.example"
        auth = { type = "bearer", token = "vault:secret/a#k" }
        """
    problems = []
    for block in (
        'token = "env:GW_VAULT_TOKEN"',
        'approle = { role_id = "role-gw", secret_id = "env:GW_VAULT_SECRET_ID" }',
    ):
        path = write_config(f'[secrets.vault]\naddress = "{vault.address}"\n{block}\n' + base)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        problems += [str(p) for p in info.value.problems]
    where = f"Vault at {vault.address}"
    assert problems == [
        f"config.toml: vendors.a.auth.token: cannot read vault:secret/a#k: {where} refused reading secret/a with 403 (permission denied)",
        'config.toml: secrets.vault.approle.role_id: must be a reference ("env:NAME" or "file:/path"), not a literal secret',
    ]
    path = write_config(
        """
        [secrets.vault]
        address = "http://vault.example:8200"
        token = "vault:secret/root#token"
        [vendors.a]
        base_url = "https://a.example"
        auth = { type = "bearer", token = "vault:secret/a" }
        [vendors.b]
        base_url = "https://a.example"
        auth = { type = "bearer", token = "aws-sm:x" }
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        "config.toml: vendors.a.auth.token: vault: reference needs a field: vault:PATH#field (a KV v2 secret holds several)",
        "config.toml: secrets.vault.address: is plain http:// to vault.example: secrets would cross the network unencrypted; use https://",
        'config.toml: secrets.vault.token: must be "env:NAME" or "file:/path" here (secret managers are not read for this key)',
    ]


def test_a_reload_while_the_manager_is_down_keeps_the_last_value_with_a_warning(
    write_config: Any, vault: VaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_VAULT_TOKEN", next(iter(vault.tokens)))
    vault.put("secret/a", {"k": "value-one-0123456789"})
    path = write_config(
        f"""
        [secrets]
        refresh_seconds = 0.05
        [secrets.vault]
        address = "{vault.address}"
        token = "env:GW_VAULT_TOKEN"
        [vendors.a]
        base_url = "https://a.example"
        auth = {{ type = "bearer", token = "vault:secret/a#k" }}
        """
    )
    first = load_config(path)
    assert first.warnings == ()
    vault.close()  # the manager goes away; what was read stays usable
    time.sleep(0.1)  # past refresh_seconds: the next load reads again
    again = load_config(path)
    auth = again.vendors["a"].auth
    assert auth is not None and not isinstance(auth, OAuth2ClientCredentials)
    assert auth.secret.reveal() == "value-one-0123456789"
    (warning,) = again.warnings
    assert warning.key == "vendors.a.auth.token"
    assert warning.message.startswith(
        f"cannot read vault:secret/a#k again (Vault at {vault.address} is unreachable"
    )
    assert warning.message.endswith("is kept")
