"""Webhook event ids in Redis: the rules of ``store.py``, the claim one Lua script, so two processes
can never both publish one event.

A key is ``gw:webhook:{NAME}:DIGEST`` (the webhook as hash tag: one Redis Cluster slot per webhook;
the event id digested, so any bytes a vendor sends make a sane key). Its value is ``f:OWNER`` while
claimed (expiring with the lease) and ``p`` once published (expiring after ``dedupe_seconds``).
"""

from __future__ import annotations

import hashlib

from ...store.connection import RedisConnection
from .store import ClaimResult

KEY_PREFIX = "gw:webhook:"

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'claimed'
end
if v == 'p' then return 'published' end
return 'in_flight'
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def event_key(webhook: str, event_id: str) -> str:
    return (
        f"{KEY_PREFIX}{{{webhook}}}:{hashlib.sha256(event_id.encode('utf-8', 'surrogateescape')).hexdigest()}"
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisWebhooks:
    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection.redis
        self._run = connection.run
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)

    async def webhook_claim(
        self, webhook: str, event_id: str, *, owner: str, lease_seconds: float
    ) -> ClaimResult:
        result = await self._run(
            "a webhook claim",
            self._claim(keys=[event_key(webhook, event_id)], args=[f"f:{owner}", _ms(lease_seconds)]),
        )
        text = result.decode() if isinstance(result, bytes) else str(result)
        if text == "claimed":
            return "claimed"
        return "published" if text == "published" else "in_flight"

    async def webhook_published(self, webhook: str, event_id: str, *, keep_seconds: float) -> None:
        await self._run(
            "a webhook mark", self._redis.set(event_key(webhook, event_id), "p", px=_ms(keep_seconds))
        )

    async def webhook_release(self, webhook: str, event_id: str, *, owner: str) -> None:
        await self._run(
            "a webhook release", self._release(keys=[event_key(webhook, event_id)], args=[f"f:{owner}"])
        )
