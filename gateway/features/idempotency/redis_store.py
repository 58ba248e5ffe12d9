"""Idempotency records in Redis: the rules of ``store.py``, each read-check-write one Lua script, so two
processes can never both claim a key and only the claim's owner can complete, renew or release it.

Keys carry the vendor as a hash tag (``gw:idem:{stripe}:...``): a vendor's keys live in one Redis
Cluster slot.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ...store.connection import RedisConnection
from .store import Claim, IdempotencyKey, IdempotencyRecord, StoredResponse

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


class RedisIdempotency:
    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection.redis
        self._run = connection.run
        self._claim = connection.script(_CLAIM)
        self._extend = connection.script(_EXTEND)
        self._complete = connection.script(_COMPLETE)
        self._release = connection.script(_RELEASE)

    async def claim(
        self, key: IdempotencyKey, *, fingerprint: str, owner: str, lease_seconds: float
    ) -> Claim:
        result = await self._claim("a claim", [record_key(key)], [owner, fingerprint, _ms(lease_seconds)])
        if result == 1:
            return Claim(True)
        return Claim(False, _record(list(result)))

    async def extend(self, key: IdempotencyKey, *, owner: str, lease_seconds: float) -> bool:
        result = await self._extend("a lease renewal", [record_key(key)], [owner, _ms(lease_seconds)])
        return bool(result == 1)

    async def complete(
        self, key: IdempotencyKey, *, owner: str, response: StoredResponse, ttl_seconds: float
    ) -> bool:
        args: list[Any] = [owner, _ms(ttl_seconds), response.status, orjson.dumps(response.headers)]
        if response.body is not None:
            args.append(response.body)
        result = await self._complete("a completion", [record_key(key)], args)
        return bool(result == 1)

    async def release(self, key: IdempotencyKey, *, owner: str) -> bool:
        result = await self._release("a release", [record_key(key)], [owner])
        return bool(result == 1)

    async def get(self, key: IdempotencyKey) -> IdempotencyRecord | None:
        values = await self._run("a read", self._redis.hmget(record_key(key), list(_FIELDS)))
        if not values or values[0] is None:
            return None
        return _record(list(values))
