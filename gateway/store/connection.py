"""The Redis connection every Redis backend shares (idempotency, rate limits, circuits, deliveries).

Two clients on one URL: ``script`` for the request path (idempotency, global rate limits, breakers),
over the lean shared connection of ``resp.py``, and ``redis`` (redis-py, its pool) for the rest
(the delivery queue, webhooks, streams), whose commands go through ``run``. Both bound every command
in time and turn Redis failures into ``StoreUnavailable``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .base import StoreUnavailable, redact_url
from .resp import ConnectionLost, Multiplexed, ReplyError, Script


class StoreScript:
    """A Lua script on the request path: ``await script(what, keys, args)``; ``what`` names it in errors."""

    def __init__(self, connection: RedisConnection, source: str) -> None:
        self.url = connection.url
        self.script = Script(connection.fast, source)

    async def __call__(self, what: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.script(keys, args)
        except TimeoutError:
            raise StoreUnavailable(f"redis at {self.url} did not answer {what} in time") from None
        except (ReplyError, ConnectionLost, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise StoreUnavailable(f"redis at {self.url} failed {what}: {detail}") from None


class RedisConnection:
    def __init__(self, url: str, *, timeout_seconds: float, max_connections: int) -> None:
        self.url = redact_url(url)
        self.timeout = timeout_seconds
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_seconds,  # waiting for a free pooled connection
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            # One immediate retry on a broken connection (a restarted Redis leaves dead pooled sockets);
            # never on a timeout, where the command may have run. Every script is safe to run twice.
            retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.fast = Multiplexed(url, timeout=timeout_seconds)

    def script(self, source: str) -> StoreScript:
        return StoreScript(self, source)

    async def run(self, what: str, call: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout * 2):
                return await call
        except TimeoutError:
            raise StoreUnavailable(f"redis at {self.url} did not answer {what} in time") from None
        except (RedisError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise StoreUnavailable(f"redis at {self.url} failed {what}: {detail}") from None

    async def close(self) -> None:
        self.fast.close()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
