"""Config for webhooks and the bus (docs/configuration.md): defaults per scheme, values, and every problem
with its file and key path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.model import BusSettings, EventField

VENDOR = '[vendors.stripe]\nbase_url = "https://api.stripe.com"\n'
BUS = '[bus]\nnats_url = "nats://127.0.0.1:4222"\n'


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WH_OLD", "whsec_old-secret-value")
    monkeypatch.setenv("WH_NEW", "whsec_new-secret-value")
    monkeypatch.setenv("WH_STANDARD", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    monkeypatch.setenv("NATS_TOKEN", "nats-token-value")


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_defaults_follow_the_spec(write_config: Callable[..., Path]) -> None:
    config = load_config(
        write_config(
            VENDOR
            + BUS
            + """
            [webhooks.stripe]
            verify = { scheme = "stripe", secret = "env:WH_OLD" }
            publish = { bus = "nats", subject = "vendors.stripe.{type}" }

            [webhooks.github]
            verify = { scheme = "github", secret = ["env:WH_OLD", "env:WH_NEW"] }
            publish = { bus = "nats", subject = "vendors.github.{type}" }

            [webhooks.std]
            verify = { scheme = "standard", secret = "env:WH_STANDARD" }
            publish = { bus = "nats", subject = "vendors.std" }
            """
        )
    )
    stripe = config.webhooks["stripe"]
    assert stripe.verify.tolerance_seconds == 300.0
    assert stripe.dedupe_seconds == 259_200.0
    assert [s.reveal() for s in stripe.verify.secrets] == ["whsec_old-secret-value"]
    assert (stripe.event_id.kind, stripe.event_id.name) == ("pointer", "/id")
    assert (stripe.event_type.kind, stripe.event_type.name) == ("pointer", "/type")
    assert stripe.publish.subject.subject_filter() == "vendors.stripe.>"
    github = config.webhooks["github"]
    assert len(github.verify.secrets) == 2
    assert github.event_id == EventField(kind="header", name="X-GitHub-Delivery")
    assert github.event_type == EventField(kind="header", name="X-GitHub-Event")
    assert config.webhooks["std"].event_id == EventField(kind="header", name="webhook-id")
    assert config.bus == BusSettings(nats_url="nats://127.0.0.1:4222")
    assert config.bus.nats_stream == "GATEWAY" and config.bus.publish_timeout_seconds == 5.0
    assert config.delivery.publish is None


def test_values_load(write_config: Callable[..., Path]) -> None:
    config = load_config(
        write_config(
            VENDOR
            + """
            [gateway]
            store = "redis://127.0.0.1:6379/0"

            [bus]
            nats_url = "nats://127.0.0.1:4222"
            nats_token = "env:NATS_TOKEN"
            nats_stream = "EVENTS"
            publish_timeout_seconds = 1.5

            [delivery]
            publish = { bus = "nats", subject = "gateway.deliveries.{state}" }

            [webhooks.shop]
            verify = { scheme = "hmac-sha256", secret = "env:WH_OLD", header = "X-Sig", prefix = "v1=", encoding = "base64" }
            event_id = "header:X-Event"
            event_type = "/kind/name"
            dedupe_seconds = 60
            publish = { bus = "redis", stream = "vendors.shop.{type}", max_length = 1000 }
            """
        )
    )
    shop = config.webhooks["shop"]
    assert (shop.verify.header, shop.verify.prefix, shop.verify.encoding) == ("X-Sig", "v1=", "base64")
    assert shop.event_id == EventField(kind="header", name="X-Event")
    assert shop.event_type.tokens == (("kind", -1), ("name", -1))
    assert shop.dedupe_seconds == 60.0
    assert (shop.publish.bus, shop.publish.max_length) == ("redis", 1000)
    assert config.bus.nats_token is not None and config.bus.nats_token.reveal() == "nats-token-value"
    assert (config.bus.nats_stream, config.bus.publish_timeout_seconds) == ("EVENTS", 1.5)
    assert config.delivery.publish is not None
    assert (
        config.delivery.publish.subject.render({"state": "dead", "vendor": "v"}) == "gateway.deliveries.dead"
    )


def test_every_problem_is_named(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDOR
        + """
        [bus]
        nats_url = "nats://user:pw@127.0.0.1:4222"
        nats_stream = "no spaces"

        [delivery]
        publish = { bus = "redis", stream = "gateway.{nope}" }

        [webhooks.a]
        verify = { scheme = "stripe", secret = "whsec_literal" }
        publish = { bus = "nats", subject = "{type}.x" }

        [webhooks.b]
        verify = { scheme = "hmac-sha256", secret = "env:WH_OLD", tolerance_seconds = 10 }
        publish = { bus = "kafka", subject = "x" }

        [webhooks.c]
        verify = { scheme = "standard", secret = ["env:WH_STANDARD", "env:WH_OLD"] }
        event_id = "id"
        publish = { bus = "nats", subject = "a..b", stream = "s" }
        typo = 1

        [webhooks.d]
        verify = { scheme = "github", secret = "env:WH_OLD", header = "X" }
        publish = { bus = "nats", subject = "vendors.github" }

        [webhooks.e]
        publish = { bus = "nats", subject = "vendors.e" }

        [webhooks.f]
        verify = { scheme = "hmac-sha256", secret = "env:WH_OLD", header = "X-Sig" }
        publish = { bus = "redis", stream = "vendors.f" }

        [webhooks.g]
        verify = { scheme = "github", secret = "env:WH_OLD" }
        publish = { bus = "redis", stream = "vendors.g" }
        """
    )
    found = problems(path)
    name = str(path)
    expected = [
        f"{name}: bus.nats_url: must not carry credentials; use nats_token",
        f"{name}: bus.nats_stream: must be letters, digits, '-' and '_' (a stream name), not 'no spaces'",
        f"{name}: delivery.publish.stream: unknown placeholder {{nope}} in 'gateway.{{nope}}' (there are: {{state}}, {{vendor}})",
        f'{name}: webhooks.a.verify.secret: must be a reference ("env:NAME" or "file:/path"), not a literal secret',
        f"{name}: webhooks.a.publish.subject: '{{type}}.x' must start with a fixed token before any placeholder (vendors.{{type}})",
        f"{name}: webhooks.b.verify.header: is required",
        f"{name}: webhooks.b.verify.tolerance_seconds: only the stripe and standard schemes sign a timestamp",
        f"{name}: webhooks.f.event_id: is required with scheme 'hmac-sha256': a JSON Pointer or \"header:NAME\"",
        f"{name}: webhooks.b.publish.bus: must be one of 'nats', 'redis', not 'kafka'",
        f"{name}: webhooks.c.verify.secret[2]: is not a Standard Webhooks secret (whsec_ followed by base64)",
        f'{name}: webhooks.c.event_id: "id" is not a JSON Pointer: it must be "" or start with "/"; or "header:NAME" for a request header',
        f'{name}: webhooks.c.publish.stream: is not used with bus = "nats" (it takes subject)',
        f"{name}: webhooks.c.publish.subject: 'a..b' has an empty token (a leading, trailing or doubled '.')",
        f"{name}: webhooks.c.typo: unknown key; expected one of dedupe_seconds, event_id, event_type, publish, "
        "request_schema, request_transform, verify",
        f"{name}: webhooks.d.verify.header: only scheme = \"hmac-sha256\" takes header (scheme 'github' fixes it)",
        f"{name}: webhooks.e.verify: is required",
        f'{name}: webhooks.d.publish.bus: is "nats" but [bus] has no nats_url',
        f'{name}: webhooks.g.publish.bus: is "redis" but the store is memory://: set [gateway] store = "redis://..."',
    ]
    assert sorted(set(found) - set(expected)) == []
    assert sorted(set(expected) - set(found)) == []
    assert len(found) == len(expected)


def test_the_shipped_config_still_checks() -> None:
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "config.toml")
    assert "sandbox" in config.vendors


def test_webhook_secrets_and_the_nats_token_are_redacted(write_config: Callable[..., Path]) -> None:
    from gateway.security import secret_values

    config = load_config(
        write_config(
            VENDOR
            + BUS
            + """
            nats_token = "env:NATS_TOKEN"

            [webhooks.github]
            verify = { scheme = "github", secret = ["env:WH_OLD", "env:WH_NEW"] }
            publish = { bus = "nats", subject = "vendors.github.{type}" }
            """
        )
    )
    assert {"whsec_old-secret-value", "whsec_new-secret-value", "nats-token-value"} <= secret_values(config)
