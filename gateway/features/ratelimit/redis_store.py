"""Shared rate schedules in Redis: the GCRA rule of ``store.py`` as one Lua script per take or pause."""

from __future__ import annotations

from ...store.connection import RedisConnection
from .store import RateBucket

RATE_KEY_PREFIX = "gw:rl:"
# GCRA (store.gcra) on one key holding the theoretical arrival time, in microseconds of the Redis
# server's clock (TIME), so replicas with skewed clocks share one schedule. ARGV: interval and tolerance
# in microseconds, and a pause in microseconds (0: take a slot). Returns the microseconds until a slot
# is due (0: taken). The key expires once the schedule is idle again. string.format keeps all 16 digits
# (tostring would print 1.7e+15); doubles hold microsecond epochs exactly until the year 2255.
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if pause > 0 then
  if now + pause + tolerance <= tat then return 0 end
  tat = now + pause + tolerance
else
  local due = tat - tolerance
  if due > now then return math.ceil(due - now) end
  tat = tat + interval
end
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return 0
"""


def rate_key(bucket: RateBucket) -> str:
    return f"{RATE_KEY_PREFIX}{{{bucket.tag}}}:{bucket.name}"


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


class RedisRates:
    def __init__(self, connection: RedisConnection) -> None:
        self._rate = connection.script(_RATE)

    async def take(self, bucket: RateBucket) -> float:
        args = [max(1, _us(bucket.interval_seconds)), _us(bucket.tolerance_seconds), 0]
        waited = await self._rate("a rate-limit slot", [rate_key(bucket)], args)
        return int(waited) / 1_000_000

    async def pause(self, bucket: RateBucket, seconds: float) -> None:
        args = [max(1, _us(bucket.interval_seconds)), _us(bucket.tolerance_seconds), max(1, _us(seconds))]
        await self._rate("a rate-limit pause", [rate_key(bucket)], args)
