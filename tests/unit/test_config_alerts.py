"""``[alerts]`` (docs/configuration.md): the rules load into typed objects with their defaults, and every
mistake is named with its file and key, by ``load_config`` and by ``gateway check``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.model import DEFAULT_ALERT_WINDOW_SECONDS, AlertRule, AlertSettings

VENDORS = """
[vendors.stripe]
base_url = "https://api.stripe.com"

[vendors.hubspot]
base_url = "https://api.hubapi.com"
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_the_contract_example_loads(write_config: Callable[..., Path]) -> None:
    config = load_config(
        write_config(
            VENDORS
            + """
[alerts]
webhook_url = "http://127.0.0.1:9000/hooks/gateway"
evaluate_seconds = 5

[[alerts.rule]]
name = "stripe-errors"
vendor = "stripe"
kind = "error_ratio"
threshold = 0.2
window_seconds = 60
for_seconds = 0
min_requests = 20

[[alerts.rule]]
name = "open"
vendor = "*"
kind = "circuit_open"
for_seconds = 30

[[alerts.rule]]
name = "slow"
vendor = "*"
kind = "p99_latency"
threshold = 2.5
"""
        )
    )
    alerts = config.alerts
    assert alerts.evaluate_seconds == 5.0
    assert str(alerts.webhook_url) == "http://127.0.0.1:9000/hooks/gateway"
    assert alerts.webhook_timeout_seconds == AlertSettings().webhook_timeout_seconds
    assert alerts.rules[0] == AlertRule(
        name="stripe-errors", vendor="stripe", kind="error_ratio", threshold=0.2, min_requests=20
    )
    assert alerts.rules[1] == AlertRule(name="open", vendor="*", kind="circuit_open", for_seconds=30.0)
    assert alerts.rules[1].threshold == 0.0  # fires while open: value 1 > 0
    assert alerts.rules[2].window_seconds == DEFAULT_ALERT_WINDOW_SECONDS


def test_no_alerts_section_means_no_rules(write_config: Callable[..., Path]) -> None:
    assert load_config(write_config(VENDORS)).alerts == AlertSettings()


def test_webhook_url_may_be_a_secret_reference(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_HOOK", "https://hooks.example.com/services/T0/B0/abc")
    config = load_config(write_config(VENDORS + '[alerts]\nwebhook_url = "env:ALERT_HOOK"\n'))
    assert str(config.alerts.webhook_url) == "https://hooks.example.com/services/T0/B0/abc"


RULE = '[[alerts.rule]]\nname = "r"\nvendor = "stripe"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("evaluate_seconds = 0.5\n", "alerts.evaluate_seconds: must be at least 1, not 0.5"),
        ('webhook_url = "ftp://x/y"\n', "alerts.webhook_url: must be an absolute http:// or https:// URL"),
        ('webhook_url = "env:NOPE_NOT_SET"\n', "alerts.webhook_url: environment variable NOPE_NOT_SET"),
        ("webhook_attempts = 0\n", "alerts.webhook_attempts: must be at least 1, not 0"),
        ("evaluate = 5\n", "alerts.evaluate: unknown key"),
        (
            RULE + 'kind = "error_rate"\nthreshold = 0.1\n',
            "alerts.rule[1].kind: must be one of 'error_ratio'",
        ),
        (RULE + 'kind = "error_ratio"\n', "alerts.rule[1].threshold: is required"),
        (RULE + 'kind = "error_ratio"\nthreshold = 1.5\n', "alerts.rule[1].threshold: is a ratio"),
        (
            RULE + 'kind = "rejected_ratio"\nthreshold = -0.1\n',
            "alerts.rule[1].threshold: must not be negative",
        ),
        (RULE + 'kind = "p99_latency"\nthreshold = 0\n', "alerts.rule[1].threshold: must be greater than 0"),
        (RULE + 'kind = "circuit_open"\nthreshold = 1\n', "alerts.rule[1].threshold: is not used with kind"),
        (
            RULE + 'kind = "dlq_depth"\nthreshold = 0\nwindow_seconds = 60\n',
            "rule[1].window_seconds: is not used",
        ),
        (
            RULE + 'kind = "dlq_depth"\nthreshold = 0\nmin_requests = 5\n',
            "rule[1].min_requests: is used only by",
        ),
        (
            RULE + 'kind = "error_ratio"\nthreshold = 0.1\nwindow_seconds = 7200\n',
            "alerts.rule[1].window_seconds: must be from 1 to 3600, not 7200",
        ),
        (
            RULE + 'kind = "error_ratio"\nthreshold = 0.1\nfor_seconds = -1\n',
            "rule[1].for_seconds: must not be",
        ),
        (RULE + 'kind = "error_ratio"\nthreshold = 0.1\nfor = 5\n', "alerts.rule[1].for: unknown key"),
        (
            '[[alerts.rule]]\nname = "r"\nvendor = "shopify"\nkind = "dlq_depth"\nthreshold = 0\n',
            "alerts.rule[1].vendor: no [vendors.shopify] in the config",
        ),
        (
            '[[alerts.rule]]\nname = "a b"\nvendor = "*"\nkind = "dlq_depth"\nthreshold = 0\n',
            "alerts.rule[1].name: rule names are letters",
        ),
        (
            RULE + 'kind = "dlq_depth"\nthreshold = 0\n' + RULE + 'kind = "circuit_open"\n',
            "alerts.rule[2].name: 'r' is already the name of another rule",
        ),
    ],
)
def test_bad_alerts_are_named_with_file_and_key(
    write_config: Callable[..., Path], text: str, expected: str
) -> None:
    found = problems_of(write_config(VENDORS + "[alerts]\n" + text))
    assert any("config.toml: alerts." in p and expected in p for p in found), found


def test_gateway_check_validates_rules(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDORS + "[alerts]\n" + RULE + 'kind = "error_ratio"\nthreshold = 2\n' + RULE.replace('"r"', '"s"')
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(
        "config.toml: alerts.rule[1].threshold: is a ratio: at least 0 and below 1, not 2"
    )
    assert lines[1].endswith("config.toml: alerts.rule[2].kind: is required")
