"""Shared fixtures: config files written to a temp dir, the gateway under test, real local vendors."""

from __future__ import annotations

import asyncio
import io
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import Config, load_config
from gateway.observability.logging import Logger, flush_all
from tests.gateway_client import GatewayClient
from tests.nats_server import NatsServer, nats_required, nats_server_binary
from tests.redis_server import RedisServer, redis_required, redis_server_binary


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The loops async tests run on: asyncio's, and uvloop's too in modules that set ``LOOP_FACTORIES``
    (code that runs on uvloop in production: its transports differ in timing and flow control)."""
    factories: dict[str, Any] | None = getattr(getattr(item, "module", None), "LOOP_FACTORIES", None)
    return factories or {"asyncio": asyncio.new_event_loop}


class CapturedLogs(io.BytesIO):
    """The gateway's stdout in a test: JSON lines, parsed on demand."""

    def getvalue(self) -> bytes:
        flush_all()  # access lines a gateway still holds for its next batched write
        return super().getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.getvalue().splitlines() if line.strip()]

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == "access"]


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write config.toml (and optional routes/NAME.toml files) into a fresh folder; return its path."""

    def write(config: str, routes: dict[str, str] | None = None, files: dict[str, str] | None = None) -> Path:
        (tmp_path / "routes").mkdir(exist_ok=True)
        (tmp_path / "transforms").mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text(textwrap.dedent(config))
        for name, text in (routes or {}).items():
            (tmp_path / "routes" / f"{name}.toml").write_text(textwrap.dedent(text))
        for name, text in (files or {}).items():
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def logs() -> CapturedLogs:
    return CapturedLogs()


GatewayFactory = Callable[..., Awaitable[GatewayClient]]


@pytest.fixture
async def gateway(write_config: Callable[..., Path], logs: CapturedLogs) -> AsyncIterator[GatewayFactory]:
    """Start the gateway on a real socket from a config text (or a loaded Config)."""
    started: list[GatewayClient] = []

    async def start(
        config: str | Config, routes: dict[str, str] | None = None, files: dict[str, str] | None = None
    ) -> Any:
        loaded = config if isinstance(config, Config) else load_config(write_config(config, routes, files))
        client = await GatewayClient.start(loaded, Logger(stream=logs))
        started.append(client)
        return client

    yield start
    for client in started:
        await client.close()


@pytest.fixture
def vendor(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Callable[..., Awaitable[TestServer]]:
    """Start a local vendor (an aiohttp app) on a real socket."""

    async def start(app: web.Application) -> TestServer:
        return await aiohttp_server(app)

    return start


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (own port and folder, no persistence), stopped after the test.

    Without redis-server on PATH the test is skipped with a loud reason, or fails under CI=true or
    GATEWAY_REQUIRE_REDIS=1, where skipping would hide that the Redis store went untested.
    """
    binary = redis_server_binary()
    if binary is None:
        reason = (
            "redis-server is not on PATH, so the Redis store is NOT TESTED (apt-get install redis-server)"
        )
        if redis_required():
            pytest.fail(reason + "; CI=true or GATEWAY_REQUIRE_REDIS=1 requires it")
        pytest.skip(reason)
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A private ``nats-server -js`` (own port, own folder for its JetStream storage), stopped after
    the test. Skipped loudly without nats-server on PATH, failed under CI=true or
    GATEWAY_REQUIRE_NATS=1, where skipping would hide that the NATS bus went untested."""
    binary = nats_server_binary()
    if binary is None:
        reason = "nats-server is not on PATH, so the NATS bus is NOT TESTED (apt-get install nats-server)"
        if nats_required():
            pytest.fail(reason + "; CI=true or GATEWAY_REQUIRE_NATS=1 requires it")
        pytest.skip(reason)
    server = NatsServer(binary, tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


def vendor_block(name: str, server: TestServer, extra: str = "") -> str:
    return f"""
[vendors.{name}]
base_url = "{server.make_url("/")}"
{extra}
"""
