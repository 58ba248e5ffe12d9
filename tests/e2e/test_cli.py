"""The commands as an operator meets them: help that lists every command, --version, and one clean line
(no traceback) when a port is taken, for every command that listens."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import build_parser


def gateway_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def test_help_lists_every_command_with_its_purpose() -> None:
    result = gateway_cli("--help")
    assert result.returncode == 0
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"run", "check", "transform", "sandbox", "dlq"} <= set(commands)
    lines = result.stdout.splitlines()
    for name in commands:
        line = next((line for line in lines if line.split()[:1] == [name]), None)
        assert line is not None and len(line.split()) > 3, f"{name} has no one-line purpose:\n{result.stdout}"
    assert "run" in result.stdout and "serve\n" not in result.stdout


def test_version() -> None:
    result = gateway_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gateway {__version__}"


def test_transform_still_parses_its_own_arguments(tmp_path: Path) -> None:
    spec = tmp_path / "t.toml"
    spec.write_text('[[map]]\nto = "/b"\nfrom = "/a"\n')
    (tmp_path / "in.json").write_text('{"a": 1}')
    result = gateway_cli("transform", str(spec), str(tmp_path / "in.json"))
    assert result.returncode == 0, result.stderr
    assert '"b": 1' in result.stdout


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        lambda cfg, busy, free: ["run", "--config", cfg, "--listen", f"127.0.0.1:{busy}"],
        lambda cfg, busy, free: [
            "run",
            "--config",
            cfg,
            "--listen",
            f"127.0.0.1:{free}",
            "--sandbox",
            f"127.0.0.1:{busy}",
        ],
        lambda cfg, busy, free: ["sandbox", "--listen", f"127.0.0.1:{busy}"],
    ],
    ids=["run", "run --sandbox", "sandbox"],
)
def test_a_busy_port_is_one_clean_line(
    write_config: Callable[..., Path], busy_port: int, command: Callable[[str, int, int], list[str]]
) -> None:
    config = write_config('[vendors.v]\nbase_url = "http://127.0.0.1:1"\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    result = gateway_cli(*command(str(config), busy_port, free))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"gateway: cannot listen on 127.0.0.1:{busy_port}: Address already in use"] or (
        errors == [f"gateway: cannot listen on 127.0.0.1:{busy_port} (--sandbox): Address already in use"]
    ), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
