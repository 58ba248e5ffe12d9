"""A vendor and the gateway on an event loop in a thread of their own, for tests whose caller is a
blocking socket (hypothesis' property tests drive them example by example), and what those tests
share: cutting bytes into pieces and damaging them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.observability.logging import Logger
from tests.conftest import CapturedLogs
from tests.gateway_client import GatewayClient

T = TypeVar("T")


@dataclass
class Threaded:
    loop: asyncio.AbstractEventLoop
    port: int  # the gateway's
    logs: CapturedLogs  # the gateway's output

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def unexpected(self) -> list[dict[str, Any]]:
        return [r for r in self.logs.records() if r["event"] == "unhandled_error"]


@contextlib.contextmanager
def gateway_beside(
    vendor: Callable[[], asyncio.Protocol], config: Callable[[int], str], folder: Path
) -> Iterator[Threaded]:
    """The raw ``vendor`` server and a gateway whose config.toml is ``config(vendor port)``, both on a
    uvloop loop (the gateway's in production) in a thread, stopped on exit."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-beside", daemon=True)
    thread.start()
    logs = CapturedLogs()
    (folder / "routes").mkdir(exist_ok=True)
    (folder / "transforms").mkdir(exist_ok=True)

    async def start() -> tuple[asyncio.AbstractServer, GatewayClient]:
        server = await loop.create_server(vendor, "127.0.0.1", 0)
        (folder / "config.toml").write_text(config(server.sockets[0].getsockname()[1]))
        client = await GatewayClient.start(load_config(folder / "config.toml"), Logger(stream=logs))
        return server, client

    async def stop(server: asyncio.AbstractServer, client: GatewayClient) -> None:
        await client.close()
        server.close()
        await server.wait_closed()

    threaded = Threaded(loop, 0, logs)
    server, client = threaded.run(start())
    threaded.port = client.port
    try:
        yield threaded
    finally:
        threaded.run(stop(server, client))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` in pieces at ``points`` (each taken modulo its length)."""
    at = sorted({p % len(data) for p in points} - {0})
    return [data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True)]


# (kind, where, what): bytes replaced or inserted there, or as many bytes as ``what`` holds cut out.
MUTATIONS = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10**6), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40).map(bytes)),
)


def mutate(data: bytes, how: tuple[str, int, bytes]) -> bytes:
    kind, at, what = how
    at %= len(data)
    if kind == "replace":
        return data[:at] + what + data[at + len(what) :]
    if kind == "insert":
        return data[:at] + what + data[at:]
    return data[:at] + data[at + len(what) :]
