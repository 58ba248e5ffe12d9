"""``redis://`` (and ``rediss://``, ``unix://``): the store every gateway process of a fleet shares.

Invariants:
- Every read-check-write is one Lua script, so it is atomic on the server: two processes can never
  both claim a key, and only the claim's owner can complete, renew or release it.
- Keys carry the vendor as a hash tag (``gw:idem:{stripe}:...``): all of a vendor's keys live in one
  Redis Cluster slot, which later multi-key scripts (global limits, queues) will need.
- Nothing waits longer than ``timeout_seconds`` (connect, each command, and a connection from the pool),
  and every failure surfaces as ``StoreUnavailable``: a dead Redis costs a request one timeout, never a hang.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..features.circuit.redis_store import RedisCircuits
from ..features.delivery.redis_store import RedisDeliveries
from .base import (
    Claim,
    IdempotencyKey,
    IdempotencyRecord,
    RateBucket,
    StoredResponse,
)
from .connection import RedisConnection

DEFAULT_TIMEOUT_SECONDS = 1.0
DEFAULT_MAX_CONNECTIONS = 64
KEY_PREFIX = "gw:idem:"

# A record is one hash: state ("in_flight" | "completed"), fp, owner; once completed also status,
# headers (JSON pairs) and body (absent when the body was too large to keep). While in flight the
# key's expiry is the lease; once completed it is the TTL.
_CLAIM = """
local v = redis.call('HMGET', KEYS[1], 'state', 'fp', 'owner', 'status', 'headers', 'body')
if not v[1] or (v[1] == 'in_flight' and v[3] == ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fp', ARGV[2], 'owner', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return v
"""
_EXTEND = """
local v = redis.call('HMGET', KEYS[1], 'state', 'owner')
if v[1] ~= 'in_flight' or v[2] ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_COMPLETE = """
local v = redis.call('HMGET', KEYS[1], 'state', 'owner')
if v[1] ~= 'in_flight' or v[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'completed', 'status', ARGV[3], 'headers', ARGV[4])
if #ARGV >= 5 then redis.call('HSET', KEYS[1], 'body', ARGV[5]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RELEASE = """
local v = redis.call('HMGET', KEYS[1], 'state', 'owner')
if v[1] ~= 'in_flight' or v[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
_FIELDS = ("state", "fp", "owner", "status", "headers", "body")

RATE_KEY_PREFIX = "gw:rl:"
# GCRA (store.base.gcra) on one key holding the theoretical arrival time, in microseconds of the Redis
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


def record_key(key: IdempotencyKey) -> str:
    # The caller's key and name are digested: any bytes they hold, and no way for one caller's
    # (client, key) pair to spell another's.
    scope = hashlib.sha256(orjson.dumps([key.client, key.key])).hexdigest()
    return f"{KEY_PREFIX}{{{key.vendor}}}:{scope}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(values: list[Any]) -> IdempotencyRecord:
    state, fp, owner, status, headers, body = values
    response = None
    if _text(state) == "completed":
        pairs = tuple((str(n), str(v)) for n, v in orjson.loads(headers or b"[]"))
        response = StoredResponse(status=int(status), headers=pairs, body=body)
    return IdempotencyRecord(
        state="completed" if response is not None else "in_flight",
        fingerprint=_text(fp or b""),
        owner=_text(owner or b""),
        response=response,
    )


class RedisStore:
    """The Redis backend: idempotency records and rate schedules here, and each feature's own Redis
    backend composed in (``circuits``, ``deliveries``), all over one connection."""

    shared = True  # every gateway process on this Redis sees the same state

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.connection = RedisConnection(
            url, timeout_seconds=timeout_seconds, max_connections=max_connections
        )
        self._url = self.connection.url
        self._redis = self.connection.redis
        self._run = self.connection.run
        self.circuits = RedisCircuits(self.connection)
        self.deliveries = RedisDeliveries(self.connection)
        self._claim = self._redis.register_script(_CLAIM)
        self._extend = self._redis.register_script(_EXTEND)
        self._complete = self._redis.register_script(_COMPLETE)
        self._release = self._redis.register_script(_RELEASE)
        self._rate = self._redis.register_script(_RATE)  # EVALSHA, loaded again on NOSCRIPT

    @property
    def url(self) -> str:
        return self._url

    async def ping(self) -> None:
        await self._run("PING", self._redis.ping())

    async def close(self) -> None:
        await self.connection.close()

    async def claim(
        self, key: IdempotencyKey, *, fingerprint: str, owner: str, lease_seconds: float
    ) -> Claim:
        result = await self._run(
            "a claim", self._claim(keys=[record_key(key)], args=[owner, fingerprint, _ms(lease_seconds)])
        )
        if result == 1:
            return Claim(True)
        return Claim(False, _record(list(result)))

    async def extend(self, key: IdempotencyKey, *, owner: str, lease_seconds: float) -> bool:
        result = await self._run(
            "a lease renewal", self._extend(keys=[record_key(key)], args=[owner, _ms(lease_seconds)])
        )
        return bool(result == 1)

    async def complete(
        self, key: IdempotencyKey, *, owner: str, response: StoredResponse, ttl_seconds: float
    ) -> bool:
        args: list[Any] = [owner, _ms(ttl_seconds), response.status, orjson.dumps(response.headers)]
        if response.body is not None:
            args.append(response.body)
        result = await self._run("a completion", self._complete(keys=[record_key(key)], args=args))
        return bool(result == 1)

    async def release(self, key: IdempotencyKey, *, owner: str) -> bool:
        result = await self._run("a release", self._release(keys=[record_key(key)], args=[owner]))
        return bool(result == 1)

    async def get(self, key: IdempotencyKey) -> IdempotencyRecord | None:
        values = await self._run("a read", self._redis.hmget(record_key(key), list(_FIELDS)))
        if not values or values[0] is None:
            return None
        return _record(list(values))

    async def rate_take(self, bucket: RateBucket) -> float:
        args = [max(1, _us(bucket.interval_seconds)), _us(bucket.tolerance_seconds), 0]
        waited = await self._run("a rate-limit slot", self._rate(keys=[rate_key(bucket)], args=args))
        return int(waited) / 1_000_000

    async def rate_pause(self, bucket: RateBucket, seconds: float) -> None:
        args = [max(1, _us(bucket.interval_seconds)), _us(bucket.tolerance_seconds), max(1, _us(seconds))]
        await self._run("a rate-limit pause", self._rate(keys=[rate_key(bucket)], args=args))
