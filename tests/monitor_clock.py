"""The gateway with a ManualClock on its monitor (history and alerts): the test moves time, second by
second, and waits for each tick, so windows and ``for_seconds`` never depend on how fast the machine is."""

from __future__ import annotations

from gateway.config import Config
from gateway.http.app import Gateway
from gateway.http.server import Limits, Server
from gateway.observability.logging import Logger
from tests.gateway_client import GatewayClient
from tests.manual_clock import ManualClock, until


async def start_gateway(config: Config, logger: Logger, clock: ManualClock) -> GatewayClient:
    """As ``GatewayClient.start``, with ``clock`` the monitor's before it starts."""
    gateway = Gateway(config, logger=logger)
    gateway.monitor.clock = clock
    await gateway.start()
    server = gateway.server = Server(gateway, Limits.of(config.gateway), logger)
    port = await server.listen(GatewayClient.host, 0)
    return GatewayClient(gateway, server, port)


async def tick(client: GatewayClient, clock: ManualClock, seconds: float = 1.0) -> None:
    """Move the clock ``seconds`` on and wait until the monitor has read the figures at that time."""
    monitor = client.app.monitor
    before = monitor.ticks
    clock.set(clock.now() + seconds)
    await until(lambda: monitor.ticks > before, f"the monitor's tick at {clock.now():.0f}")
