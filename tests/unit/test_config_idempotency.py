"""Idempotency config: the vendor's ``idempotency = {...}``, the route's mode, and the store URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, Idempotency, load_config

VENDOR = '[vendors.stripe]\nbase_url = "https://api.stripe.com"\n'


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_defaults(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(VENDOR))
    assert config.vendors["stripe"].idempotency == Idempotency(
        forward_header=None, ttl_seconds=86400.0, lease_seconds=10.0, max_body_bytes=1048576
    )


def test_vendor_and_route_settings_load(write_config: Callable[..., Path]) -> None:
    path = write_config(
        '[gateway]\nstore = "redis://127.0.0.1:6379/0"\n'
        + VENDOR
        + 'idempotency = { forward_header = "Idempotency-Key", ttl_seconds = 3600, lease_seconds = 5,'
        + " max_body_bytes = 65536 }\n",
        routes={
            "stripe": """
            vendor = "stripe"
            [[route]]
            method = "POST"
            path = "/v1/charges"
            idempotency = "required"
            [[route]]
            method = "POST"
            path = "/v1/refunds"
            [[route]]
            method = "POST"
            path = "/v1/tokens"
            idempotency = "off"
            """
        },
    )
    config = load_config(path)
    stripe = config.vendors["stripe"]
    assert config.gateway.store == "redis://127.0.0.1:6379/0"
    assert stripe.idempotency == Idempotency(
        forward_header="Idempotency-Key", ttl_seconds=3600.0, lease_seconds=5.0, max_body_bytes=65536
    )
    assert [r.idempotency for r in stripe.routes] == ["required", None, "off"]


@pytest.mark.parametrize(
    ("vendor_extra", "route_extra", "expected"),
    [
        ("", 'idempotency = "always"', "routes/stripe.toml: route[1].idempotency: must be one of 'required'"),
        ("", "idempotency = true", "routes/stripe.toml: route[1].idempotency: must be a string"),
        (
            'idempotency = { forward_header = "Bad Header" }',
            "",
            "config.toml: vendors.stripe.idempotency.forward_header: is not a valid header name",
        ),
        (
            "idempotency = { ttl_seconds = 0 }",
            "",
            "config.toml: vendors.stripe.idempotency.ttl_seconds: must be greater than 0",
        ),
        (
            'idempotency = { lease_seconds = "10" }',
            "",
            "config.toml: vendors.stripe.idempotency.lease_seconds: must be a number",
        ),
        (
            "idempotency = { max_body_bytes = -1 }",
            "",
            "config.toml: vendors.stripe.idempotency.max_body_bytes: must be at least 0",
        ),
        ("idempotency = { ttl = 5 }", "", "config.toml: vendors.stripe.idempotency.ttl: unknown key"),
        ('idempotency = "required"', "", "config.toml: vendors.stripe.idempotency: must be a table"),
    ],
)
def test_problems_name_file_and_key(
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    vendor_extra: str,
    route_extra: str,
    expected: str,
) -> None:
    path = write_config(
        VENDOR + vendor_extra + "\n",
        routes={"stripe": f'vendor = "stripe"\n[[route]]\nmethod = "POST"\npath = "/x"\n{route_extra}\n'},
    )
    monkeypatch.chdir(path.parent)
    found = problems(path)
    assert any(p.startswith(expected) for p in found), found


def test_store_must_be_memory_or_redis(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config('[gateway]\nstore = "postgres://db"\n')
    monkeypatch.chdir(path.parent)
    assert any(p.startswith("config.toml: gateway.store: must be") for p in problems(path))
    for url in ("memory://", "redis://h:6379/0", "rediss://h:6380/1"):
        assert load_config(write_config(f'[gateway]\nstore = "{url}"\n')).gateway.store == url
