"""Config loading: typed objects on success, every problem as ``FILE: key.path: message`` on failure."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, Secret, load_config

GOOD = """
[gateway]
listen = "127.0.0.1:9000"
max_body_bytes = 2048

[vendors.stripe]
base_url = "https://api.stripe.com/base/"
timeout = { connect_seconds = 1.5, total_seconds = 4 }
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_good_config_loads_into_typed_objects(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(GOOD))
    assert config.gateway.listen.host == "127.0.0.1"
    assert config.gateway.listen.port == 9000
    assert config.gateway.max_body_bytes == 2048
    assert config.gateway.store == "memory://"
    stripe = config.vendors["stripe"]
    assert stripe.base_path == "/base"
    assert stripe.timeout.connect_seconds == 1.5
    assert stripe.timeout.total_seconds == 4.0
    assert stripe.max_body_bytes == 2048  # inherits the gateway's limit
    assert stripe.expose == "all" and stripe.routes == ()  # no routes file: pass everything


def test_config_objects_are_immutable(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(GOOD))
    with pytest.raises(AttributeError):
        config.vendors["stripe"].base_url = None  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[gateway]\nlisten = 8080\n", "config.toml: gateway.listen: must be a string, not an integer"),
        ('[gateway]\nlisten = "localhost"\n', "config.toml: gateway.listen: must be HOST:PORT"),
        ('[gateway]\nlisten = "h:99999"\n', "config.toml: gateway.listen: port must be a number"),
        (
            "[gateway]\nmax_body_bytes = -1\n",
            "config.toml: gateway.max_body_bytes: must be at least 1, not -1",
        ),
        (
            '[gateway]\nstore = "mysql://x"\n',
            "config.toml: gateway.store: must be 'memory://' or a redis:// URL",
        ),
        ("[gateway]\nlisten_port = 1\n", "config.toml: gateway.listen_port: unknown key"),
        ("[gatway]\n", "config.toml: gatway: unknown key"),
        (
            '[vendors.a]\nbase_url = "ftp://x"\n',
            "config.toml: vendors.a.base_url: must be an http:// or https:// URL",
        ),
        ('[vendors.a]\nbase_url = "http://"\n', "config.toml: vendors.a.base_url:"),
        (
            '[vendors.a]\nbase_url = "https://u:p@x.com"\n',
            "config.toml: vendors.a.base_url: must not carry credentials",
        ),
        (
            '[vendors.a]\nbase_url = "https://x.com/?a=1"\n',
            "config.toml: vendors.a.base_url: must not have a query",
        ),
        ("[vendors.a]\n", "config.toml: vendors.a.base_url: is required"),
        (
            '[vendors.a]\nbase_url = "https://x.com"\ntimeout = { total_seconds = -3 }\n',
            "config.toml: vendors.a.timeout.total_seconds: must be greater than 0, not -3",
        ),
        (
            '[vendors.a]\nbase_url = "https://x.com"\ntimeout = { connect_seconds = true }\n',
            "config.toml: vendors.a.timeout.connect_seconds: must be a number, not a boolean",
        ),
        (
            '[vendors.A]\nbase_url = "https://x.com"\n',
            "config.toml: vendors.A: vendor names are lowercase letters",
        ),
        (
            '[vendors.a]\nbase_url = "https://x.com"\nauth = { type = "bearer", token = "sk_test_123" }\n',
            'config.toml: vendors.a.auth.token: must be a reference ("env:NAME", "file:/path", "aws-sm:NAME[#field]" or "vault:PATH#field"), not a literal',
        ),
        (
            '[vendors.a]\nbase_url = "https://x.com"\nauth = { type = "bearer", token = "env:GW_TEST_UNSET_VAR" }\n',
            "config.toml: vendors.a.auth.token: environment variable GW_TEST_UNSET_VAR is not set",
        ),
        (
            '[vendors.a]\nbase_url = "https://x.com"\nauth = { type = "bearer", token = "file:missing.txt" }\n',
            "config.toml: vendors.a.auth.token: cannot read secret file",
        ),
        (
            '[vendors.a]\nbase_url = "https://x.com"\nauth = { type = "magic" }\n',
            "config.toml: vendors.a.auth.type: must be one of",
        ),
        (
            '[vendors.a]\nbase_url = "https://x.com"\ntls = { ca_file = "nope.pem" }\n',
            "config.toml: vendors.a.tls.ca_file: file not found",
        ),
        ("[gateway\n", "config.toml: invalid TOML"),
    ],
)
def test_each_problem_names_file_key_and_reason(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    path = write_config(text)
    monkeypatch.chdir(path.parent)
    problems = problems_of(path)
    assert any(p.startswith(expected) for p in problems), problems


def test_literal_secret_is_never_echoed(write_config: Callable[..., Path]) -> None:
    path = write_config(
        '[vendors.a]\nbase_url = "https://x.com"\nauth = { type = "bearer", token = "sk_live_abc" }\n'
    )
    problems = problems_of(path)
    assert problems and not any("sk_live_abc" in p for p in problems)


def test_all_problems_are_reported_not_just_the_first(write_config: Callable[..., Path]) -> None:
    path = write_config(
        """
        [gateway]
        listen = "nope"
        max_body_bytes = 0
        typo = 1

        [vendors.a]
        base_url = "ftp://x"

        [vendors.b]
        timeout = { connect_seconds = -1 }
        """,
        routes={"a": 'vendor = "zzz"\n[[route]]\npath = "v1/x"\n'},
    )
    problems = problems_of(path)
    keys = [p.split(": ")[1] for p in problems]
    for key in (
        "gateway.listen",
        "gateway.max_body_bytes",
        "gateway.typo",
        "vendors.a.base_url",
        "vendors.b.base_url",
        "vendors.b.timeout.connect_seconds",
        "vendor",
        "route[1].path",
    ):
        assert key in keys, (key, problems)


def test_secrets_resolve_from_env_and_file_and_hide_from_repr(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GW_TEST_TOKEN", "tok-from-env")
    (tmp_path / "pw.txt").write_text("pw-from-file\n")
    config = load_config(
        write_config(
            """
            [vendors.a]
            base_url = "https://x.com"
            auth = { type = "bearer", token = "env:GW_TEST_TOKEN" }
            [vendors.b]
            base_url = "https://y.com"
            auth = { type = "basic", username = "me", password = "file:pw.txt" }
            """
        )
    )
    a, b = config.vendors["a"].auth, config.vendors["b"].auth
    assert a is not None and b is not None
    assert isinstance(a.secret, Secret) and a.secret.reveal() == "tok-from-env"
    assert b.secret.reveal() == "pw-from-file"  # stripped
    for shown in (repr(config), str(config), repr(a), str(b.secret)):
        assert "tok-from-env" not in shown and "pw-from-file" not in shown


def test_routes_load_with_globs_and_expose(write_config: Callable[..., Path]) -> None:
    config = load_config(
        write_config(
            GOOD,
            routes={
                "stripe": """
                vendor = "stripe"
                expose = "declared"
                [[route]]
                method = "POST"
                path = "/v1/customers"
                [[route]]
                method = "get"
                path = "/v1/customers/*"
                [[route]]
                path = "/v1/files/**"
                """
            },
        )
    )
    stripe = config.vendors["stripe"]
    assert stripe.expose == "declared"
    assert [r.method for r in stripe.routes] == ["POST", "GET", "*"]
    assert stripe.find_route("POST", ("v1", "customers")) is stripe.routes[0]
    assert stripe.find_route("GET", ("v1", "customers")) is None
    assert stripe.find_route("GET", ("v1", "customers", "cus_1")) is stripe.routes[1]
    assert stripe.find_route("HEAD", ("v1", "customers", "cus_1")) is stripe.routes[1]
    assert stripe.find_route("GET", ("v1", "customers", "cus_1", "x")) is None
    assert stripe.find_route("DELETE", ("v1", "files", "a", "b")) is stripe.routes[2]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ('path = "/a/**/b"', "route[1].path: '**' may only be the last segment"),
        ('path = "/a/x*"', "route[1].path: segment 'x*' is not allowed"),
        ('path = "/a/../b"', "route[1].path: must not contain '.' or '..' segments"),
        ('path = "/a?b=1"', "route[1].path: must not contain a query string"),
        ('path = "/a"\nmethod = "FETCH"', "route[1].method: must be an HTTP method"),
        ('path = "/a"\ncolour = "red"', "route[1].colour: unknown key"),
        ('method = "GET"', "route[1].path: is required"),
    ],
)
def test_route_problems(write_config: Callable[..., Path], route: str, expected: str) -> None:
    path = write_config(GOOD, routes={"stripe": f'vendor = "stripe"\n[[route]]\n{route}\n'})
    problems = problems_of(path)
    assert any(p.endswith(expected) or expected in p for p in problems), problems
    assert all(
        p.startswith(str(path.parent / "routes" / "stripe.toml")) or "routes/stripe.toml" in p
        for p in problems
    )


def test_contradicting_expose_between_route_files(write_config: Callable[..., Path]) -> None:
    path = write_config(
        GOOD,
        routes={"a": 'vendor = "stripe"\nexpose = "all"\n', "b": 'vendor = "stripe"\nexpose = "declared"\n'},
    )
    assert any("contradicts" in p for p in problems_of(path))


def test_missing_config_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent.toml")
    assert problems == [f"{tmp_path / 'absent.toml'}: file not found"]


def test_shipped_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "config.toml")
    assert "sandbox" in config.vendors


def test_check_command_prints_every_problem_and_exits_1(write_config: Callable[..., Path]) -> None:
    path = write_config('[gateway]\nlisten = "x"\n[vendors.a]\nbase_url = "ftp://q"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("config.toml: gateway.listen: must be HOST:PORT, not 'x'")
    assert "vendors.a.base_url: must be an http:// or https:// URL" in lines[1]


def test_check_command_ok(write_config: Callable[..., Path]) -> None:
    path = write_config(GOOD)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "ok (1 vendors, 0 routes)" in result.stdout


def test_an_unknown_key_gets_the_nearest_known_one_or_the_list(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        """
        [gatway]
        [gateway]
        max_body_byte = 1024
        [vendors.a]
        base_url = "https://x.com"
        timeout = { totl_seconds = 3 }
        circuit = { colour = "red" }
        """
    )
    monkeypatch.chdir(path.parent)
    assert problems_of(path) == [
        'config.toml: gateway.max_body_byte: unknown key; did you mean "max_body_bytes"?',
        'config.toml: vendors.a.timeout.totl_seconds: unknown key; did you mean "total_seconds"?',
        "config.toml: vendors.a.circuit.colour: unknown key; expected one of enabled, failure_ratio, "
        "min_requests, open_seconds, window_seconds",
        'config.toml: gatway: unknown key; did you mean "gateway"?',
    ]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            '{ type = "beraer", token = "env:X" }',
            "config.toml: vendors.a.auth.type: must be one of 'bearer', 'header', 'query', 'basic', "
            "'oauth2_client_credentials', not 'beraer'; did you mean 'bearer'?",
        ),
        ('{ token = "env:X", name = "n" }', "config.toml: vendors.a.auth.type: is required"),
    ],
)
def test_a_misspelled_or_missing_auth_type_is_one_problem_not_one_per_key(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, auth: str, expected: str
) -> None:
    path = write_config(f'[vendors.a]\nbase_url = "https://x.com"\nauth = {auth}\n')
    monkeypatch.chdir(path.parent)
    assert problems_of(path) == [expected]


def test_every_problem_of_a_schema_file_is_listed_once_under_the_file(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        '[vendors.a]\nbase_url = "https://x.com"\n',
        routes={
            "a": """
            vendor = "a"
            [[route]]
            method = "POST"
            path = "/x"
            request_schema = "broken.schema.json"
            response_schema = "refers.schema.json"
            [[route]]
            method = "PUT"
            path = "/x"
            request_schema = "broken.schema.json"
            """
        },
        files={
            "transforms/broken.schema.json": """
            {"type": "object", "required": "id",
             "properties": {"id": {"type": "integr", "minimum": "1"}, "name": {"minLength": -1}}}
            """,
            "transforms/refers.schema.json": '{"$ref": "inner.schema.json"}',
            "transforms/inner.schema.json": '{"type": "strin"}',
        },
    )
    monkeypatch.chdir(path.parent)
    types = "(array, boolean, integer, null, number, object, string)"
    assert problems_of(path) == [
        "routes/a.toml: route[1].request_schema: broken.schema.json has 4 problem(s), listed under its own file",
        "transforms/broken.schema.json: /properties/id/minimum: '1' is not of type 'number'",
        f"transforms/broken.schema.json: /properties/id/type: 'integr' is not a JSON Schema type {types}; "
        'did you mean "integer"?',
        "transforms/broken.schema.json: /properties/name/minLength: -1 is less than the minimum of 0",
        "transforms/broken.schema.json: /required: 'id' is not of type 'array'",
        "routes/a.toml: route[1].response_schema: refers.schema.json refers to "
        "transforms/inner.schema.json, which has 1 problem(s)",
        f"transforms/inner.schema.json: /type: 'strin' is not a JSON Schema type {types}; did you mean \"string\"?",
        "routes/a.toml: route[2].request_schema: broken.schema.json has 4 problem(s), listed under its own file",
    ]
