"""Redis Streams as a bus, over the store's own connection: XADD is acknowledged by its reply (the
entry id), so a webhook's 2xx means the event is in the stream. Consumers read it with XREAD or a
consumer group. Fields: ``body`` and each header by name (``Gateway-Webhook``, ``Gateway-Event-Id``).
"""

from __future__ import annotations

from typing import Any

from ..store.connection import RedisConnection
from .base import Message


class RedisStreams:
    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection.redis
        self._run = connection.run

    async def stream_add(self, message: Message, *, max_length: int | None) -> str:
        fields: dict[Any, Any] = {"body": message.body, **message.headers}
        entry = await self._run(
            "an XADD",
            self._redis.xadd(message.subject, fields, maxlen=max_length, approximate=True),
        )
        return entry.decode() if isinstance(entry, bytes) else str(entry)
