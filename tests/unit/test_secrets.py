"""Secrets by reference only: literals refused, files re-read on every load, values never shown."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, OAuth2ClientCredentials, load_config
from gateway.observability.logging import Logger
from gateway.security import secret_values

LITERAL = "sk_live_pasted_by_mistake_123"


@pytest.fixture(autouse=True)
def _in_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages name files relative to the working directory


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ('auth = {{ type = "bearer", token = "{v}" }}', "vendors.a.auth.token"),
        ('auth = {{ type = "header", name = "X-Key", value = "{v}" }}', "vendors.a.auth.value"),
        ('auth = {{ type = "query", name = "key", value = "{v}" }}', "vendors.a.auth.value"),
        ('auth = {{ type = "basic", username = "u", password = "{v}" }}', "vendors.a.auth.password"),
        (
            'auth = {{ type = "oauth2_client_credentials", token_url = "https://t/x", client_id = "{v}", '
            'client_secret = "env:HOME" }}',
            "vendors.a.auth.client_id",
        ),
        (
            'auth = {{ type = "oauth2_client_credentials", token_url = "https://t/x", client_id = "env:HOME", '
            'client_secret = "{v}" }}',
            "vendors.a.auth.client_secret",
        ),
        ('[clients.svc]\nkey = "{v}"\nallow = ["a"]', "clients.svc.key"),
    ],
)
def test_a_literal_secret_is_a_config_error_that_does_not_repeat_it(
    write_config: Callable[..., Path], block: str, key: str
) -> None:
    text = f'[vendors.a]\nbase_url = "https://x.com"\n{block.format(v=LITERAL)}\n'
    problems = problems_of(write_config(text))
    assert any(f"config.toml: {key}: must be a reference" in p for p in problems), problems
    assert all(LITERAL not in p for p in problems)


def test_file_secrets_are_read_again_on_every_load(write_config: Callable[..., Path], tmp_path: Path) -> None:
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("first-token-value\n")
    path = write_config(
        '[vendors.a]\nbase_url = "https://x.com"\nauth = { type = "bearer", token = "file:token.txt" }\n'
    )
    first = load_config(path).vendors["a"].auth
    secret_file.write_text("rotated-token-value")
    second = load_config(path).vendors["a"].auth
    assert first is not None and second is not None and not isinstance(first, OAuth2ClientCredentials)
    assert not isinstance(second, OAuth2ClientCredentials)
    assert first.secret.reveal() == "first-token-value"
    assert second.secret.reveal() == "rotated-token-value"
    assert first != second  # a rotated OAuth2 secret gets a fresh token cache entry the same way


def test_no_config_object_shows_a_secret(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "GW_S_TOKEN": "bearer-secret-value",
        "GW_S_ID": "oauth-client-id-value",
        "GW_S_SECRET": "oauth-client-secret-value",
        "GW_S_KEY": "gateway-key-value-xyz",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    config = load_config(
        write_config(
            """
            [clients.billing]
            key = "env:GW_S_KEY"
            allow = ["a", "b:GET /x/**"]
            [vendors.a]
            base_url = "https://x.com"
            auth = { type = "bearer", token = "env:GW_S_TOKEN" }
            [vendors.b]
            base_url = "https://y.com"
            auth = { type = "oauth2_client_credentials", token_url = "https://y.com/t", client_id = "env:GW_S_ID", client_secret = "env:GW_S_SECRET" }
            """
        )
    )
    shown = " ".join(
        [repr(config), str(config), repr(config.clients), *(repr(v) for v in config.vendors.values())]
    )
    assert "env:GW_S_TOKEN" in shown  # the reference is shown, so ops can tell which secret it is
    for value in values.values():
        assert value not in shown


def test_missing_secret_sources_name_the_reference_only(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "empty.txt").write_text("\n")
    problems = problems_of(
        write_config(
            """
            [vendors.a]
            base_url = "https://x.com"
            auth = { type = "bearer", token = "env:GW_SURELY_UNSET_VAR" }
            [vendors.b]
            base_url = "https://x.com"
            auth = { type = "bearer", token = "file:empty.txt" }
            [vendors.c]
            base_url = "https://x.com"
            auth = { type = "bearer", token = "env:" }
            """
        )
    )
    assert problems == [
        "config.toml: vendors.a.auth.token: environment variable GW_SURELY_UNSET_VAR is not set",
        f"config.toml: vendors.b.auth.token: secret file {tmp_path / 'empty.txt'} is empty",
        "config.toml: vendors.c.auth.token: env: reference names no variable",
    ]


def test_logger_redacts_every_configured_secret_form(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_R_PW", 'pa ss"word/1')
    monkeypatch.setenv("GW_R_KEY", "client-key-123456")
    config = load_config(
        write_config(
            """
            [clients.svc]
            key = "env:GW_R_KEY"
            allow = ["a"]
            [vendors.a]
            base_url = "https://x.com"
            auth = { type = "basic", username = "user", password = "env:GW_R_PW" }
            """
        )
    )
    values = secret_values(config)
    assert {'pa ss"word/1', "pa%20ss%22word%2F1", "pa+ss%22word%2F1", "dXNlcjpwYSBzcyJ3b3JkLzE="} <= values
    stream = io.BytesIO()
    logger = Logger(stream=stream)
    logger.redact(values)
    logger.event("oops", error='GET /x?pw=pa%20ss%22word%2F1 with pa ss"word/1', key="client-key-123456")
    logger.event("basic", header="Basic dXNlcjpwYSBzcyJ3b3JkLzE=")
    text = stream.getvalue().decode()
    assert "[redacted]" in text
    for value in values:
        assert value not in text
    assert "client-key-123456" not in text
