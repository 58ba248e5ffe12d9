"""Circuit breakers in Redis: the rules of ``store.py`` as one Lua script over one hash per vendor.

``gw:cb:{vendor}`` holds ``open_until`` and ``probe_until`` (milliseconds of the Redis server's clock,
so replicas with skewed clocks agree), ``probe_token``, and the window's buckets as fields ``s<index>``
(successes) and ``f<index>`` (failures). Every operation is one script run, so a probe lease is taken
by exactly one process and the window is counted once however many replicas report into it.
"""

from __future__ import annotations

from typing import Any

from ...store.connection import RedisConnection
from .store import CIRCUIT_BUCKETS, CircuitSettings, CircuitStateName, CircuitView, Outcome

CIRCUIT_KEY_PREFIX = "gw:cb:"
# TTLs in the script: an open breaker's hash lives open_seconds plus a day (outliving any probe), a
# closed one's expires with its window.

# KEYS[1]: the hash. ARGV[1]: op ("report" | "probe" | "settle"), ARGV[2]: open_seconds in ms.
# report: ARGV[3] successes, ARGV[4] failures, ARGV[5] bucket ms, ARGV[6] buckets, ARGV[7] min_requests,
#         ARGV[8] failure_ratio.   probe: ARGV[3] token, ARGV[4] lease ms.   settle: ARGV[3] token,
#         ARGV[4] outcome. Returns {state (0 closed, 1 open, 2 half-open), wait ms, changed, probe,
#         requests, failures}.
_CIRCUIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local op = ARGV[1]
local open_ms = tonumber(ARGV[2])
local open_until = tonumber(redis.call('HGET', key, 'open_until')) or 0
local probe_until = tonumber(redis.call('HGET', key, 'probe_until')) or 0
local function view()
  if open_until == 0 then return {0, 0, 0, 0, 0, 0} end
  if now < open_until then return {1, open_until - now, 0, 0, 0, 0} end
  return {2, math.max(0, probe_until - now), 0, 0, 0, 0}
end
if op == 'report' then
  if open_until > 0 then return view() end
  local s, f = tonumber(ARGV[3]), tonumber(ARGV[4])
  local bucket_ms, buckets = tonumber(ARGV[5]), tonumber(ARGV[6])
  local index = math.floor(now / bucket_ms)
  if s > 0 then redis.call('HINCRBY', key, 's' .. index, s) end
  if f > 0 then redis.call('HINCRBY', key, 'f' .. index, f) end
  local all = redis.call('HGETALL', key)
  local total, fails = 0, 0
  for i = 1, #all, 2 do
    local name = all[i]
    local kind = string.sub(name, 1, 1)
    if kind == 's' or kind == 'f' then
      if tonumber(string.sub(name, 2)) <= index - buckets then
        redis.call('HDEL', key, name)
      else
        local n = tonumber(all[i + 1])
        total = total + n
        if kind == 'f' then fails = fails + n end
      end
    end
  end
  if (s > 0 or f > 0) and total >= tonumber(ARGV[7]) and fails >= tonumber(ARGV[8]) * total then
    redis.call('DEL', key)
    redis.call('HSET', key, 'open_until', now + open_ms)
    redis.call('PEXPIRE', key, open_ms + 86400000)
    return {1, open_ms, 1, 0, total, fails}
  end
  if total > 0 then redis.call('PEXPIRE', key, bucket_ms * buckets * 2) end
  return {0, 0, 0, 0, 0, 0}
end
if op == 'probe' then
  if open_until == 0 or now < open_until or now < probe_until then return view() end
  redis.call('HSET', key, 'probe_until', now + tonumber(ARGV[4]), 'probe_token', ARGV[3])
  return {2, 0, 0, 1, 0, 0}
end
-- settle
local token = redis.call('HGET', key, 'probe_token')
if open_until == 0 or token ~= ARGV[3] or now >= probe_until then return view() end
redis.call('HDEL', key, 'probe_until', 'probe_token')
if ARGV[4] == 'success' then
  redis.call('DEL', key)
  return {0, 0, 1, 0, 0, 0}
end
if ARGV[4] == 'failure' then
  redis.call('HSET', key, 'open_until', now + open_ms)
  return {1, open_ms, 1, 0, 0, 0}
end
return {2, 0, 0, 0, 0, 0}
"""

_STATES: tuple[CircuitStateName, ...] = ("closed", "open", "half_open")


def circuit_key(vendor: str) -> str:
    return f"{CIRCUIT_KEY_PREFIX}{{{vendor}}}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _view(result: Any) -> CircuitView:
    state, wait_ms, changed, probe, requests, failures = (int(v) for v in result)
    return CircuitView(
        state=_STATES[state],
        wait_seconds=wait_ms / 1000,
        changed=bool(changed),
        probe=bool(probe),
        requests=requests,
        failures=failures,
    )


class RedisCircuits:
    """``CircuitOps`` over a ``store.redis.RedisConnection``."""

    def __init__(self, connection: RedisConnection) -> None:
        self._circuit_script = connection.script(_CIRCUIT)

    async def _circuit(self, vendor: str, args: list[Any]) -> CircuitView:
        return _view(await self._circuit_script("a circuit breaker update", [circuit_key(vendor)], args))

    async def circuit_report(
        self, vendor: str, settings: CircuitSettings, *, successes: int, failures: int
    ) -> CircuitView:
        args = [
            "report",
            _ms(settings.open_seconds),
            successes,
            failures,
            _ms(settings.bucket_seconds),
            CIRCUIT_BUCKETS,
            settings.min_requests,
            repr(settings.failure_ratio),
        ]
        return await self._circuit(vendor, args)

    async def circuit_probe(
        self, vendor: str, settings: CircuitSettings, *, token: str, lease_seconds: float
    ) -> CircuitView:
        return await self._circuit(vendor, ["probe", _ms(settings.open_seconds), token, _ms(lease_seconds)])

    async def circuit_settle(
        self, vendor: str, settings: CircuitSettings, *, token: str, outcome: Outcome
    ) -> CircuitView:
        return await self._circuit(vendor, ["settle", _ms(settings.open_seconds), token, outcome])
