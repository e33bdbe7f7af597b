"""The state store in Redis (``GATEWAY_REDIS_URL``): what every replica and front behind one URL shares.

A record is a hash (value, owner, created, size) with Redis's own expiry, listed through a sorted set by age per
space (and per owner); the space's size is kept beside it, so trimming to a bound is a walk from the oldest. An
index entry whose record expired is dropped when a walk meets it. A quota admission is one Lua script: checked,
counted and reserved atomically across replicas, one round trip.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

from app.state.base import REASONS, Decision, Limits, Record, StoreDown, Usage, pack, unpack, windows

P = ParamSpec("P")
T = TypeVar("T")


def _down(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis's own errors (refused, timed out, gone mid-call) as the store being down: one kind of failure for the
    callers, whichever store is behind."""
    import redis

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise StoreDown(f"redis: {exc.__class__.__name__}: {exc}") from exc

    return call

_PUT = """
local old = redis.call('HGET', KEYS[1], 's')
if old then redis.call('DECRBY', KEYS[4], old) end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'o', ARGV[2], 'c', ARGV[3], 's', ARGV[5])
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) else redis.call('PERSIST', KEYS[1]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
redis.call('INCRBY', KEYS[4], ARGV[5])
return 1
"""

_DELETE = """
local size = redis.call('HGET', KEYS[1], 's')
local owner = redis.call('HGET', KEYS[1], 'o')
redis.call('ZREM', KEYS[2], ARGV[1])
if owner then redis.call('ZREM', ARGV[2] .. owner, ARGV[1]) end
if size then redis.call('DECRBY', KEYS[3], size) end
return redis.call('DEL', KEYS[1])
"""

_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens_minute = tonumber(redis.call('GET', KEYS[2]) or '0')
local tokens_day = tonumber(redis.call('GET', KEYS[3]) or '0')
local stale = tonumber(ARGV[7])
local reserved, running = 0, 0
local slots = redis.call('HGETALL', KEYS[4])
for i = 1, #slots, 2 do
  local tokens, started = string.match(slots[i + 1], '(%d+):([%d.]+)')
  if tonumber(started) < stale then redis.call('HDEL', KEYS[4], slots[i])
  else reserved = reserved + tonumber(tokens); running = running + 1 end
end
local rpm, tpm, tpd, most, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[8])
local verdict = 0
if rpm > 0 and requests >= rpm then verdict = 1
elseif tpm > 0 and tokens_minute + reserved + want > tpm then verdict = 2
elseif tpd > 0 and tokens_day + reserved + want > tpd then verdict = 3
elseif most > 0 and running >= most then verdict = 4 end
if verdict == 0 then
  requests = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], 120)
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[8] .. ':' .. ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[9])
  reserved = reserved + want
  running = running + 1
end
return {verdict, requests, tokens_minute, tokens_day, reserved, running}
"""


class RedisStore:
    name = "redis"

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.clock = clock
        self._put = self.client.register_script(_PUT)
        self._delete = self.client.register_script(_DELETE)
        self._admit = self.client.register_script(_ADMIT)

    # --- records ----------------------------------------------------------------------------------------------

    @_down
    async def put(self, space: str, key: str, value: bytes, *, owner: str = "", ttl: float | None = None) -> None:
        stored = pack(value)
        await self._put(keys=[_record(space, key), _index(space), _index(space, owner), _size(space)],
                        args=[stored, owner, self.clock(), int(ttl * 1000) if ttl else 0, len(stored), key])

    @_down
    async def get(self, space: str, key: str) -> Record | None:
        found = cast(dict[bytes, bytes], await self.client.hgetall(_record(space, key)))
        if not found:
            return None
        ttl = await self.client.pttl(_record(space, key))
        created = float(found[b"c"])
        return Record(key, found[b"o"].decode(), unpack(found[b"v"]), created,
                      self.clock() + ttl / 1000 if ttl and ttl > 0 else None)

    @_down
    async def delete(self, space: str, key: str) -> bool:
        gone = await self._delete(keys=[_record(space, key), _index(space), _size(space)],
                                  args=[key, _index(space, "")])
        return bool(gone)

    @_down
    async def scan(self, space: str, *, owner: str | None = None, after: str | None = None,
                   limit: int = 100) -> list[Record]:
        index = _index(space, owner) if owner is not None else _index(space)
        start = 0
        if after is not None:
            rank = cast(int | None, await self.client.zrank(index, after))
            start = rank + 1 if rank is not None else await self.client.zcard(index)
        out: list[Record] = []
        while len(out) < limit:
            keys = cast(list[bytes], await self.client.zrange(index, start, start + limit - 1))
            if not keys:
                break
            start += len(keys)
            for raw in keys:
                record = await self.get(space, raw.decode())
                if record is None:
                    await self.client.zrem(index, raw)  # expired: its index entry goes too
                    start -= 1
                elif len(out) < limit:
                    out.append(record)
        return out

    @_down
    async def trim(self, space: str, max_bytes: int) -> int:
        removed = 0
        while int(await self.client.get(_size(space)) or 0) > max_bytes:
            oldest = cast(list[bytes], await self.client.zrange(_index(space), 0, 0))
            if not oldest:
                await self.client.set(_size(space), 0)  # only expired records were counted
                break
            if await self.delete(space, oldest[0].decode()):
                removed += 1
            else:
                await self.client.zrem(_index(space), oldest[0])
        return removed

    # --- quotas -------------------------------------------------------------------------------------------------

    @_down
    async def admit(self, name: str, limits: Limits, slot: str, tokens: int, stale_after: float) -> Decision:
        now = self.clock()
        minute, day, minute_resets, day_resets = windows(now)
        prefix = f"fgw:quota:{name}"
        result = await self._admit(
            keys=[f"{prefix}:req:{minute}", f"{prefix}:tok:{minute}", f"{prefix}:tokd:{day}", f"{prefix}:slots"],
            args=[limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day, limits.max_concurrency,
                  now, slot, now - stale_after, limits.clamp(tokens), int(stale_after) + 60])
        found, requests, tokens_minute, tokens_day, reserved, running = (int(x) for x in result)
        usage = Usage(requests, tokens_minute, tokens_day, reserved, running, minute_resets, day_resets)
        return Decision(found == 0, REASONS.get(found), usage)

    @_down
    async def settle(self, name: str, slot: str, tokens: int) -> None:
        minute, day, _, _ = windows(self.clock())
        prefix = f"fgw:quota:{name}"
        async with self.client.pipeline(transaction=True) as pipe:
            if tokens:
                for counter, ttl in ((f"{prefix}:tok:{minute}", 120), (f"{prefix}:tokd:{day}", 2 * 86400)):
                    pipe.incrby(counter, tokens)
                    pipe.expire(counter, ttl)
            pipe.hdel(f"{prefix}:slots", slot)
            await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()


def _record(space: str, key: str) -> str:
    return f"fgw:rec:{space}:{key}"


def _index(space: str, owner: str | None = None) -> str:
    return f"fgw:idx:{space}" if owner is None else f"fgw:idx:{space}:owner:{owner}"


def _size(space: str) -> str:
    return f"fgw:bytes:{space}"
