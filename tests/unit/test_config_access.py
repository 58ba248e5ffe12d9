"""Config for OAuth2, version pinning, [clients] and TLS: typed objects, or every problem by key path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, OAuth2ClientCredentials, load_config
from gateway.security import startup_notes


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GW_C_ID", "client-id")
    monkeypatch.setenv("GW_C_SECRET", "client-secret")
    monkeypatch.setenv("GW_C_KEY1", "key-one-123456")
    monkeypatch.setenv("GW_C_KEY2", "key-two-123456")


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


VENDORS = """
[vendors.stripe]
base_url = "https://api.stripe.com"
[vendors.hubspot]
base_url = "https://api.hubapi.com"
"""


def test_oauth2_client_credentials_load(write_config: Callable[..., Path]) -> None:
    config = load_config(
        write_config(
            """
            [vendors.crm]
            base_url = "https://api.crm.example"
            auth = { type = "oauth2_client_credentials", token_url = "https://login.crm.example/oauth/token", client_id = "env:GW_C_ID", client_secret = "env:GW_C_SECRET", scope = "a b", client_auth = "body" }
            """
        )
    )
    auth = config.vendors["crm"].auth
    assert isinstance(auth, OAuth2ClientCredentials)
    assert str(auth.token_url) == "https://login.crm.example/oauth/token"
    assert auth.client_id.reveal() == "client-id" and auth.client_secret.reveal() == "client-secret"
    assert auth.scope == "a b" and auth.client_auth == "body"
    assert config.warnings == ()


def test_oauth2_problems(write_config: Callable[..., Path]) -> None:
    problems = problems_of(
        write_config(
            """
            [vendors.a]
            base_url = "https://x.com"
            auth = { type = "oauth2_client_credentials", token_url = "/relative", client_id = "env:GW_C_ID", client_auth = "jwt", audience = "x" }
            """
        )
    )
    assert problems == [
        "config.toml: vendors.a.auth.token_url: must be an absolute http:// or https:// URL, not '/relative'",
        "config.toml: vendors.a.auth.client_secret: is required",
        "config.toml: vendors.a.auth.client_auth: must be one of 'basic', 'body', not 'jwt'",
        "config.toml: vendors.a.auth.audience: unknown key; expected one of client_auth, client_id, client_secret, scope, token_url, type",
    ]


def test_plain_http_off_loopback_is_refused_unless_the_vendor_allows_it(
    write_config: Callable[..., Path],
) -> None:
    vendor = """
        [vendors.a]
        base_url = "http://api.x.com"
        auth = { type = "oauth2_client_credentials", token_url = "http://login.x.com/t", client_id = "env:HOME", client_secret = "env:HOME" }
        """
    with pytest.raises(ConfigError) as info:
        load_config(write_config(vendor))
    assert [str(p) for p in info.value.problems] == [
        "config.toml: vendors.a.base_url: is plain http:// to api.x.com, which is not this machine: requests, "
        "answers and credentials would cross the network unencrypted; use https://, or set allow_plaintext = true",
        "config.toml: vendors.a.auth.token_url: is plain http:// to login.x.com, which is not this machine: "
        "requests, answers and credentials would cross the network unencrypted; use https://, or set "
        "allow_plaintext = true",
    ]
    config = load_config(write_config(vendor + "allow_plaintext = true\n"))
    assert config.vendors["a"].allow_plaintext
    assert [f"{w.key}: {w.message}" for w in config.warnings] == [
        "vendors.a.base_url: is plain http (allow_plaintext = true): requests, answers and credentials cross "
        "the network unencrypted",
        "vendors.a.auth.token_url: is plain http (allow_plaintext = true): the client secret and tokens cross "
        "the network unencrypted",
    ]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("[::1]", True),
        ("localhost", True),
        ("127.example.com", False),  # a name that merely starts like a loopback address
        ("localhost.example.com", False),
        ("10.0.0.1", False),
    ],
)
def test_only_this_machine_is_loopback(write_config: Callable[..., Path], host: str, loopback: bool) -> None:
    path = write_config(f'[vendors.a]\nbase_url = "http://{host}:8081"\n')
    if loopback:
        assert load_config(path).warnings == ()
    else:
        with pytest.raises(ConfigError, match=r"vendors\.a\.base_url: is plain http://"):
            load_config(path)


@pytest.mark.parametrize(
    ("version", "kind", "name", "value", "segments"),
    [
        ('{ header = "Stripe-Version", value = "2024-06-20" }', "header", "Stripe-Version", "2024-06-20", ()),
        ('{ query = "api-version", value = "7.1" }', "query", "api-version", "7.1", ()),
        ('{ path_prefix = "/v2/" }', "path_prefix", "", "/v2", ("v2",)),
        ('{ path_prefix = "/api/v3" }', "path_prefix", "", "/api/v3", ("api", "v3")),
    ],
)
def test_version_pins_load(
    write_config: Callable[..., Path],
    version: str,
    kind: str,
    name: str,
    value: str,
    segments: tuple[str, ...],
) -> None:
    config = load_config(write_config(f'[vendors.a]\nbase_url = "https://x.com"\nversion = {version}\n'))
    pin = config.vendors["a"].version
    assert pin is not None
    assert (pin.kind, pin.name, pin.value, pin.segments) == (kind, name, value, segments)


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ('{ value = "1" }', "vendors.a.version: needs exactly one of header, query or path_prefix"),
        ('{ header = "X-V", query = "v", value = "1" }', "vendors.a.version: needs exactly one of"),
        ('{ header = "X-V" }', "vendors.a.version.value: is required"),
        ('{ header = "Bad Header", value = "1" }', "vendors.a.version.header: is not a valid header name"),
        (
            '{ header = "X-V", value = "1\\r\\nX-Evil: 1" }',
            "vendors.a.version.value: must be printable ASCII",
        ),
        ('{ path_prefix = "v2" }', "vendors.a.version.path_prefix: must be a path like '/v2'"),
        ('{ path_prefix = "/../admin" }', "vendors.a.version.path_prefix: must be a path like '/v2'"),
        ('{ path_prefix = "/v%32" }', "vendors.a.version.path_prefix: must be a path like '/v2'"),
        ('{ path_prefix = "/v2", value = "2" }', "vendors.a.version.value: is not used with path_prefix"),
        ('{ header = "X-V", value = "1", extra = 1 }', "vendors.a.version.extra: unknown key"),
    ],
)
def test_version_problems(write_config: Callable[..., Path], version: str, problem: str) -> None:
    problems = problems_of(write_config(f'[vendors.a]\nbase_url = "https://x.com"\nversion = {version}\n'))
    assert any(p.startswith(f"config.toml: {problem}") for p in problems), problems


def test_version_may_not_overwrite_the_credentials(write_config: Callable[..., Path]) -> None:
    problems = problems_of(
        write_config(
            """
            [vendors.a]
            base_url = "https://x.com"
            auth = { type = "header", name = "X-Api-Key", value = "env:GW_C_ID" }
            version = { header = "x-api-key", value = "1" }
            [vendors.b]
            base_url = "https://x.com"
            auth = { type = "bearer", token = "env:GW_C_ID" }
            version = { header = "Authorization", value = "1" }
            """
        )
    )
    assert problems == [
        "config.toml: vendors.a.version.header: 'x-api-key' is already set by auth",
        "config.toml: vendors.b.version.header: 'Authorization' is already set by auth",
    ]


def test_clients_load_with_allow_rules(write_config: Callable[..., Path]) -> None:
    config = load_config(
        write_config(
            VENDORS
            + """
            [clients.billing]
            key = "env:GW_C_KEY1"
            allow = ["stripe", "hubspot:get /crm/**"]
            [clients.reports]
            key = "env:GW_C_KEY2"
            allow = []
            """
        )
    )
    billing = config.clients["billing"]
    assert billing.key.reveal() == "key-one-123456"
    whole, narrow = billing.allow
    assert whole.vendor == "stripe" and whole.route is None
    assert narrow.vendor == "hubspot" and narrow.route is not None
    assert (narrow.route.method, narrow.route.path, narrow.route.segments) == (
        "GET",
        "/crm/**",
        ("crm", "**"),
    )
    assert config.clients["reports"].allow == ()


def test_client_problems(write_config: Callable[..., Path]) -> None:
    problems = problems_of(
        write_config(
            VENDORS
            + """
            [clients.a]
            key = "env:GW_C_KEY1"
            allow = ["stripe", "nosuch", "hubspot:FETCH /x", "hubspot:GET x", "hubspot:GET /a/**/b", 7]
            [clients.b]
            key = "env:GW_C_KEY1"
            allow = ["stripe"]
            [clients.c]
            allow = "stripe"
            [clients."bad name"]
            key = "env:GW_C_KEY2"
            allow = ["stripe"]
            """
        )
    )
    assert problems == [
        "config.toml: clients.a.allow[2]: no [vendors.nosuch] in the config",
        'config.toml: clients.a.allow[3]: must be "vendor" or "vendor:METHOD /path/glob"; '
        "'FETCH' is not a method or *",
        "config.toml: clients.a.allow[4]: path must start with '/', not 'x'",
        "config.toml: clients.a.allow[5]: path '**' may only be the last segment",
        "config.toml: clients.a.allow[6]: must be a string, not an integer",
        "config.toml: clients.b.key: is the same key as clients.a; each client needs its own",
        'config.toml: clients.c.key: is required: a gateway key ("env:NAME" or "file:/path"), or a cert_subject '
        "when callers present certificates ([gateway] tls.client_ca_file)",
        "config.toml: clients.c.allow: must be an array of strings, not a string",
        "config.toml: clients.bad name: client names are letters, digits, '.', '-' and '_'",
    ]


def test_an_empty_clients_table_is_a_problem(write_config: Callable[..., Path]) -> None:
    assert problems_of(write_config(VENDORS + "[clients]\n")) == [
        "config.toml: clients: has no clients; remove [clients] to run without caller authentication"
    ]


def test_tls_verify_false_is_accepted_with_a_warning(write_config: Callable[..., Path]) -> None:
    path = write_config('[vendors.a]\nbase_url = "https://x.com"\ntls = { verify = false }\n')
    config = load_config(path)
    assert not config.vendors["a"].tls.verify
    (warning,) = config.warnings
    assert warning.key == "vendors.a.tls.verify" and "not checked" in warning.message
    notes = startup_notes(config, "127.0.0.1")
    fields = {"file": warning.file, "key": "vendors.a.tls.verify", "detail": warning.message}
    assert ("config_warning", "warning", fields) in notes
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "warning: vendors.a.tls.verify: is false" in result.stderr


def test_tls_verify_false_with_a_ca_file_is_a_problem(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_text("x")
    problems = problems_of(
        write_config(
            '[vendors.a]\nbase_url = "https://x.com"\ntls = { verify = false, ca_file = "ca.pem" }\n'
        )
    )
    assert problems == [
        "config.toml: vendors.a.tls.ca_file: is never used with verify = false; drop one of them"
    ]


def test_startup_notes_say_whether_callers_are_authenticated(write_config: Callable[..., Path]) -> None:
    open_config = load_config(write_config(VENDORS))
    ((event, level, fields),) = startup_notes(open_config, "127.0.0.1")
    assert (event, level, fields["mode"]) == ("client_auth", "info", "off")
    assert "not authenticated" in fields["detail"]
    ((_, level, fields), plain) = startup_notes(open_config, "0.0.0.0")
    assert level == "warning" and "0.0.0.0, not loopback" in fields["detail"]
    assert plain[:2] == ("listener", "warning") and "without [gateway] tls" in plain[2]["detail"]
    keyed = load_config(
        write_config(
            '[gateway]\nadmin_key = "env:GW_C_KEY2"\n'
            + VENDORS
            + '[clients.x]\nkey = "env:GW_C_KEY1"\nallow = ["stripe"]\n'
        )
    )
    assert startup_notes(keyed, "0.0.0.0") == [
        ("client_auth", "info", {"mode": "key", "clients": ["x"]}),
        plain,
    ]
    assert startup_notes(keyed, "127.0.0.1") == [("client_auth", "info", {"mode": "key", "clients": ["x"]})]
