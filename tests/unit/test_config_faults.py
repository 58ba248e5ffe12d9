"""Config for fault injection (docs/configuration.md): off unless present, values, every problem with its file
and key, the warning ``gateway check`` prints, and the caller's X-Gateway-Fault header."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, Faults, load_config
from gateway.errors import BadRequest
from gateway.features.faults.policy import Plan, parse_fault_header

VENDOR = '[vendors.sandbox]\nbase_url = "http://127.0.0.1:8081"\n'


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_off_unless_present(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(VENDOR))
    assert config.vendors["sandbox"].faults is None
    assert config.warnings == ()


def test_values_load_and_warn(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDOR
        + """
[vendors.sandbox.faults]
abort = { percent = 10.0, status = 503 }
delay = { percent = 20, seconds = 0.5 }
reset = { percent = 0.0 }
header_control = true
""",
        routes={
            "sandbox": """
            vendor = "sandbox"
            expose = "all"
            [[route]]
            path = "/v1/calm/**"
            faults = {}
            [[route]]
            path = "/v1/cut"
            faults = { reset = { percent = 5 } }
            """
        },
    )
    config = load_config(path)
    sandbox = config.vendors["sandbox"]
    assert sandbox.faults == Faults(
        abort_percent=10.0,
        abort_status=503,
        delay_percent=20.0,
        delay_seconds=0.5,
        reset_percent=0.0,
        header_control=True,
    )
    calm, cut = sandbox.routes
    assert calm.faults == Faults() and not calm.faults.enabled
    assert cut.faults == Faults(reset_percent=5.0)
    # Wherever faults can be injected, check says so; an empty table injects nothing and says nothing.
    assert [(w.key, w.message) for w in config.warnings] == [
        (
            "vendors.sandbox.faults",
            "fault injection is on (10% answered 503; 20% delayed 0.5s; callers may ask for faults "
            "with X-Gateway-Fault): vendor calls fail on purpose",
        ),
        ("route[2].faults", "fault injection is on (5% reset): vendor calls fail on purpose"),
    ]
    assert config.warnings[1].file.endswith("routes/sandbox.toml")
    assert Faults(abort_percent=1.0).abort_status == 503  # the default status


def test_every_problem_names_its_key(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDOR
        + """
[vendors.sandbox.faults]
abort = { percent = 101, status = 200 }
delay = { percent = -1 }
reset = { percent = "5", extra = 1 }
header_control = "yes"
typo = 1

[vendors.other]
base_url = "http://127.0.0.1:8081"
faults = { abort = { percent = 60 }, reset = { percent = 50 } }
"""
    )
    found = problems(path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "vendors.sandbox.faults.abort.percent: must be from 0 to 100, not 101",
        "vendors.sandbox.faults.abort.status: must be at least 400, not 200",
        "vendors.sandbox.faults.delay.percent: must not be negative, not -1",
        "vendors.sandbox.faults.delay.seconds: is required",
        "vendors.sandbox.faults.reset.percent: must be a number, not a string",
        "vendors.sandbox.faults.reset.extra: unknown key; expected one of percent",
        "vendors.sandbox.faults.header_control: must be true or false, not a string",
        "vendors.sandbox.faults.typo: unknown key; expected one of abort, delay, header_control, reset",
        "vendors.other.faults.reset.percent: abort and reset exclude each other, so their percents add up "
        "to at most 100, not 60 + 50",
    ]
    assert all(line.split(": ", 1)[0].endswith("/config.toml") for line in found)


def test_a_route_faults_problem_names_the_routes_file(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDOR,
        routes={
            "sandbox": 'vendor = "sandbox"\n[[route]]\npath = "/x"\nfaults = { abort = { percent = 1, status = 600 } }\n'
        },
    )
    (line,) = problems(path)
    assert line.endswith(
        "routes/sandbox.toml: route[1].faults.abort.status: must be a 4xx or 5xx status code, not 600"
    )


def test_gateway_check_prints_the_warning(write_config: Callable[..., Path]) -> None:
    path = write_config(VENDOR + "[vendors.sandbox.faults]\nabort = { percent = 10.0 }\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "warning: vendors.sandbox.faults: fault injection is on (10% answered 503): vendor calls fail on purpose"
        in result.stderr
    )


@pytest.mark.parametrize(
    ("values", "plan"),
    [
        (["abort=503"], Plan(abort_status=503)),
        (["delay=0.2"], Plan(delay_seconds=0.2)),
        (["reset"], Plan(reset=True)),
        ([" Delay = 1.5 ,abort=429"], Plan(delay_seconds=1.5, abort_status=429)),
        (["delay=0.1", "reset"], Plan(delay_seconds=0.1, reset=True)),  # two fields, one request
    ],
)
def test_the_fault_header(values: list[str], plan: Plan) -> None:
    assert parse_fault_header(values) == plan


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("abort=200", "abort needs a 4xx or 5xx status"),
        ("abort=5x3", "abort needs a 4xx or 5xx status"),
        ("delay=0", "delay needs seconds greater than 0"),
        ("delay=inf", "delay needs seconds greater than 0"),
        ("reset=yes", "unknown fault 'reset=yes'"),
        ("drop", "unknown fault 'drop'"),
        ("abort=503, reset", "abort and reset exclude each other"),
        ("delay=1, delay=2", "delay is given twice"),
        (" , ", "is empty"),
    ],
)
def test_a_bad_fault_header(value: str, says: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_fault_header([value])
    assert info.value.detail.startswith("X-Gateway-Fault: ") and says in info.value.detail
