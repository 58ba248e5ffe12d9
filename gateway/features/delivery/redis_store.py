"""The delivery queue in Redis: a stream with one consumer group, a delay set, the dead letters.

Keys (one hash tag, so every script below touches a single Redis Cluster slot):

- ``gw:dq:{dq}:r:ID``: the delivery record, a hash (request, state, attempts, last error, answer);
- ``gw:dq:{dq}:stream``: ready deliveries, one entry (``id``) each, read through the consumer group
  ``workers``. An entry is pending (in the group's PEL, owned by one consumer = one gateway process)
  while a worker holds it, and acknowledged and deleted once the worker let it go, so the stream
  holds only what is ready or in progress;
- ``gw:dq:{dq}:delayed``: a sorted set of deliveries waiting out a retry delay (score: due, in ms of
  the Redis clock); every ``take`` moves the due ones onto the stream;
- ``gw:dq:{dq}:dead``: dead letters by the time they died, and ``gw:dq:{dq}:dead-count``, per vendor.

A gateway process that dies leaves its entries pending; ``take`` with ``reclaim`` runs XAUTOCLAIM for
entries idle longer than ``claim_after_seconds``, and live workers reset the idle time of what they
hold (``touch``: XCLAIM by the same consumer). Every state change is one script, so a record and the
structures naming it never disagree, and a record already delivered or dead is never queued again.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.exceptions import ResponseError

from ...store.connection import RedisConnection
from .store import DeliveryRecord, DeliveryRequest, DeliveryResponse, DeliveryState, Lease

PREFIX = "gw:dq:{dq}:"
STREAM = PREFIX + "stream"
DELAYED = PREFIX + "delayed"
DEAD = PREFIX + "dead"
DEAD_COUNT = PREFIX + "dead-count"
GROUP = "workers"

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: record, stream. ARGV: id, then field/value pairs.
_ENQUEUE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
return 1
"""

# KEYS: delayed, stream. ARGV: group, consumer, count, reclaim (0/1), min idle ms. Moves up to 100 due
# retries onto the stream, then reclaims and reads. Returns {entry id, delivery id, ...}.
_TAKE = (
    _NOW_MS
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', id)
  redis.call('ZREM', KEYS[1], id)
end
local out = {}
local count = tonumber(ARGV[3])
local function add(entries)
  for _, e in ipairs(entries) do
    if e[2] then
      out[#out + 1] = e[1]
      out[#out + 1] = e[2][2]
    end
  end
end
if ARGV[4] == '1' then
  local claimed = redis.call('XAUTOCLAIM', KEYS[2], ARGV[1], ARGV[2], ARGV[5], '0-0', 'COUNT', count)
  add(claimed[2])
end
local want = count - #out / 2
if want > 0 then
  local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', KEYS[2], '>')
  if res then add(res[1][2]) end
end
return out
"""
)

# KEYS: stream. ARGV: group, consumer, entry ids... Resets the idle time of entries this consumer owns.
_TOUCH = """
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return 1
"""

# KEYS: record, stream. ARGV: group, entry, now (epoch seconds).
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'delivered' or state == 'dead' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return false
end
redis.call('HSET', KEYS[1], 'state', 'delivering', 'updated', ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: record, stream, delayed, dead, dead-count. ARGV: group, entry, op (done|retry|dead|release), id,
# now (epoch seconds), attempts, error, ms (keep for done, delay for retry), has answer (0/1),
# status, headers, body.
_FINISH = (
    _NOW_MS
    + """
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'delivered' or state == 'dead' then return 0 end
local op = ARGV[3]
if op == 'release' then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'updated', ARGV[5])
  redis.call('XADD', KEYS[2], '*', 'id', ARGV[4])
  return 1
end
redis.call('HSET', KEYS[1], 'attempts', ARGV[6], 'updated', ARGV[5])
if op == 'retry' then
  local delay = tonumber(ARGV[8])
  local next_at = tostring(tonumber(ARGV[5]) + delay / 1000)
  redis.call('HSET', KEYS[1], 'state', 'queued', 'error', ARGV[7], 'next', next_at)
  redis.call('ZADD', KEYS[3], now + delay, ARGV[4])
  return 1
end
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[1], 'status', ARGV[10], 'rheaders', ARGV[11], 'rbody', ARGV[12])
end
redis.call('HDEL', KEYS[1], 'next')
if op == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'delivered')
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  return 1
end
redis.call('HSET', KEYS[1], 'state', 'dead', 'error', ARGV[7])
redis.call('ZADD', KEYS[4], now, ARGV[4])
redis.call('HINCRBY', KEYS[5], redis.call('HGET', KEYS[1], 'vendor'), 1)
return 1
"""
)

# KEYS: record, stream, dead, dead-count. ARGV: id, now (epoch seconds).
_REPLAY = """
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'updated', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('HDEL', KEYS[1], 'next')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], redis.call('HGET', KEYS[1], 'vendor'), -1)
redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
return 1
"""

# KEYS: record, dead, dead-count. ARGV: id.
_PURGE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
redis.call('HINCRBY', KEYS[3], redis.call('HGET', KEYS[1], 'vendor'), -1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""


def record_key(delivery_id: str) -> str:
    return f"{PREFIX}r:{delivery_id}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(request: DeliveryRequest) -> list[Any]:
    fields: list[Any] = [
        "state", "queued",
        "vendor", request.vendor,
        "method", request.method,
        "path", request.path,
        "query", request.query,
        "segments", orjson.dumps(request.segments),
        "headers", orjson.dumps(request.headers),
        "body", request.body,
        "rid", request.request_id,
        "attempts", 0,
        "replays", 0,
        "created", repr(time.time()),
    ]  # fmt: skip
    fields += ["updated", fields[-1]]
    if request.client is not None:
        fields += ["client", request.client]
    if request.idempotency_key is not None:
        fields += ["key", request.idempotency_key]
    fields += ["fwd", request.forward_header or ""]  # always there: its absence marks an older record
    return fields


def _forward_header(
    data: dict[str, Any], key: str | None, headers: tuple[tuple[str, str], ...]
) -> str | None:
    value = data.get("fwd")
    if value is not None:
        return _text(value) or None
    # A record from before "fwd" holds "key" only when the key was sent under the vendor's forward_header,
    # which is the stored header carrying it.
    if key is None:
        return None
    return next((name for name, v in headers if v == key), "Idempotency-Key")


def _pairs(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(n), str(v)) for n, v in orjson.loads(raw or b"[]"))


def _record(delivery_id: str, data: dict[str, Any]) -> DeliveryRecord:
    def text(name: str) -> str | None:
        value = data.get(name)
        return None if value is None else _text(value)

    headers = _pairs(data.get("headers"))
    key = text("key")
    request = DeliveryRequest(
        vendor=text("vendor") or "",
        method=text("method") or "",
        path=text("path") or "",
        query=text("query") or "",
        segments=tuple(str(s) for s in orjson.loads(data.get("segments") or b"[]")),
        headers=headers,
        body=bytes(data.get("body") or b""),
        client=text("client"),
        request_id=text("rid") or "",
        idempotency_key=key,
        forward_header=_forward_header(data, key, headers),
    )
    response = None
    if data.get("status") is not None:
        response = DeliveryResponse(
            status=int(data["status"]),
            headers=_pairs(data.get("rheaders")),
            body=bytes(data.get("rbody") or b""),
        )
    state = text("state") or "queued"
    next_attempt = text("next")
    return DeliveryRecord(
        id=delivery_id,
        request=request,
        state=_state(state),
        attempts=int(data.get("attempts") or 0),
        created=float(data.get("created") or 0),
        updated=float(data.get("updated") or 0),
        last_error=text("error"),
        next_attempt=float(next_attempt) if next_attempt else None,
        response=response,
        replays=int(data.get("replays") or 0),
    )


def _state(value: str) -> DeliveryState:
    if value == "delivering":
        return "delivering"
    if value == "delivered":
        return "delivered"
    if value == "dead":
        return "dead"
    return "queued"


def _hash(flat: list[Any]) -> dict[str, Any]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


class RedisDeliveries:
    """``DeliveryOps`` over a ``store.redis.RedisConnection``."""

    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection.redis
        self._run = connection.run
        self._delivery_scripts: dict[str, Any] | None = None
        self._group_ready = False

    def _script(self, name: str) -> Any:
        if self._delivery_scripts is None:
            register = self._redis.register_script
            self._delivery_scripts = {
                "enqueue": register(_ENQUEUE),
                "take": register(_TAKE),
                "touch": register(_TOUCH),
                "start": register(_START),
                "finish": register(_FINISH),
                "replay": register(_REPLAY),
                "purge": register(_PURGE),
            }
        return self._delivery_scripts[name]

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _grouped(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script that needs the consumer group; create it (again: a restarted Redis is empty)."""
        if not self._group_ready:
            await self._ensure_group()
        try:
            return await self._script(name)(keys=keys, args=args)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group()
            return await self._script(name)(keys=keys, args=args)

    async def delivery_enqueue(self, delivery_id: str, request: DeliveryRequest) -> None:
        args = [delivery_id, *_fields(request)]
        await self._run(
            "a delivery enqueue", self._script("enqueue")(keys=[record_key(delivery_id), STREAM], args=args)
        )

    async def delivery_get(self, delivery_id: str) -> DeliveryRecord | None:
        data = await self._run("a delivery read", self._redis.hgetall(record_key(delivery_id)))
        if not data:
            return None
        return _record(delivery_id, {_text(k): v for k, v in data.items()})

    async def delivery_take(
        self, consumer: str, count: int, *, claim_after_seconds: float, reclaim: bool
    ) -> list[Lease]:
        args = [GROUP, consumer, count, 1 if reclaim else 0, max(1, round(claim_after_seconds * 1000))]
        flat = await self._run("a delivery take", self._grouped("take", [DELAYED, STREAM], args))
        return [Lease(_text(flat[i + 1]), _text(flat[i])) for i in range(0, len(flat), 2)]

    async def delivery_start(self, lease: Lease) -> DeliveryRecord | None:
        args = [GROUP, lease.token, repr(time.time())]
        flat = await self._run(
            "a delivery start", self._script("start")(keys=[record_key(lease.id), STREAM], args=args)
        )
        if not flat:
            return None
        return _record(lease.id, _hash(list(flat)))

    async def delivery_touch(self, consumer: str, leases: list[Lease]) -> None:
        if leases:
            args = [GROUP, consumer, *(lease.token for lease in leases)]
            await self._run("a delivery touch", self._script("touch")(keys=[STREAM], args=args))

    async def _finish(
        self, lease: Lease, op: str, args: list[Any], response: DeliveryResponse | None
    ) -> None:
        keys = [record_key(lease.id), STREAM, DELAYED, DEAD, DEAD_COUNT]
        tail: list[Any] = ["0"]
        if response is not None:
            tail = ["1", response.status, orjson.dumps(response.headers), response.body]
        full = [GROUP, lease.token, op, lease.id, repr(time.time()), *args, *tail]
        await self._run(f"a delivery {op}", self._script("finish")(keys=keys, args=full))

    async def delivery_done(
        self, lease: Lease, *, attempts: int, response: DeliveryResponse, keep_seconds: float
    ) -> None:
        await self._finish(lease, "done", [attempts, "", max(1, round(keep_seconds * 1000))], response)

    async def delivery_retry(self, lease: Lease, *, attempts: int, error: str, delay_seconds: float) -> None:
        await self._finish(lease, "retry", [attempts, error, max(0, round(delay_seconds * 1000))], None)

    async def delivery_dead(
        self, lease: Lease, *, attempts: int, error: str, response: DeliveryResponse | None
    ) -> None:
        await self._finish(lease, "dead", [attempts, error, 0], response)

    async def delivery_release(self, lease: Lease) -> None:
        await self._finish(lease, "release", [0, "", 0], None)

    async def delivery_depth(self) -> tuple[int, dict[str, int]]:
        async def read() -> tuple[int, dict[str, int]]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(STREAM)
            pipe.zcard(DELAYED)
            pipe.hgetall(DEAD_COUNT)
            ready, delayed, dead = await pipe.execute()
            counts = {_text(k): int(v) for k, v in dead.items() if int(v) > 0}
            return int(ready) + int(delayed), counts

        result: tuple[int, dict[str, int]] = await self._run("a delivery count", read())
        return result

    async def dead_letters(self, limit: int) -> list[DeliveryRecord]:
        async def read() -> list[DeliveryRecord]:
            ids = [_text(i) for i in await self._redis.zrange(DEAD, 0, max(0, limit - 1))]
            if not ids:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for delivery_id in ids:
                pipe.hgetall(record_key(delivery_id))
            found = await pipe.execute()
            return [
                _record(i, {_text(k): v for k, v in data.items()})
                for i, data in zip(ids, found, strict=True)
                if data
            ]

        result: list[DeliveryRecord] = await self._run("a dead-letter listing", read())
        return result

    async def dead_replay(self, delivery_id: str) -> bool:
        keys = [record_key(delivery_id), STREAM, DEAD, DEAD_COUNT]
        done = await self._run(
            "a dead-letter replay", self._script("replay")(keys=keys, args=[delivery_id, repr(time.time())])
        )
        return bool(done == 1)

    async def dead_purge(self, delivery_id: str) -> bool:
        keys = [record_key(delivery_id), DEAD, DEAD_COUNT]
        done = await self._run("a dead-letter purge", self._script("purge")(keys=keys, args=[delivery_id]))
        return bool(done == 1)
