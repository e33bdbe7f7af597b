"""The state store in Redis (``GATEWAY_REDIS_URL``): what every replica and front behind one URL shares.

A record is a hash (value, owner, created) with Redis's own expiry. Beside it, per space: two sorted sets by
creation (the space's, the owner's) for listing; two by expiry (the space's, the owner's) for sweeping and trimming;
a hash of each record's size and owner; and byte counters (the space's, the owner's). Redis expires a record on its
own, but not those entries: a sweep (run before every size, trim and by the gateway's sweeper) drops the records
whose time passed together with every entry of theirs, so the counters count live records only and no index keeps a
dead id. Every change to a record and its entries is one Lua script: atomic across replicas, one round trip. A
quota admission is one too: checked, counted and reserved together; a slot names its holder, whose lease key the
holder's heartbeat renews, and the script frees the slots of holders whose lease is gone.

Redis at ``maxmemory`` refuses writes ("OOM command not allowed"): that is :class:`~app.state.base.StoreFull`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

from app.state.base import (
    COUNTERS,
    FAR,
    LEASE,
    REASONS,
    Decision,
    Limits,
    Record,
    StoreDown,
    StoreFull,
    Tally,
    Usage,
    pack,
    unpack,
    windows,
)

P = ParamSpec("P")
T = TypeVar("T")
SCHEMA_VERSION = 2
_SWEEP_BATCH = 500


def _down(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis's own errors (refused, timed out, gone mid-call) as the store being down — or full, at maxmemory: one
    kind of failure for the callers, whichever store is behind."""
    import redis

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except redis.exceptions.OutOfMemoryError as exc:
            raise StoreFull(f"redis: out of memory (maxmemory): {exc}") from exc
        except (redis.RedisError, OSError) as exc:
            if "OOM" in str(exc):
                raise StoreFull(f"redis: out of memory (maxmemory): {exc}") from exc
            raise StoreDown(f"redis: {exc.__class__.__name__}: {exc}") from exc

    return call


# Shared by the record scripts. ARGV[1] is always the space's key prefix ``fgw:s:<space>``; a record's entries:
# P:rec:<key> (hash v, o, c), P:idx and P:idx:o:<owner> (by creation), P:exp and P:exp:o:<owner> (by expiry),
# P:meta (key -> "size:owner"), P:bytes and P:bytes:o:<owner>.
_FORGET = """
local P = ARGV[1]
local function forget(key)
  local meta = redis.call('HGET', P .. ':meta', key)
  if meta then
    local size, owner = string.match(meta, '^(%d+):(.*)$')
    redis.call('DECRBY', P .. ':bytes', size)
    redis.call('DECRBY', P .. ':bytes:o:' .. owner, size)
    redis.call('ZREM', P .. ':idx:o:' .. owner, key)
    redis.call('ZREM', P .. ':exp:o:' .. owner, key)
    redis.call('HDEL', P .. ':meta', key)
  end
  redis.call('ZREM', P .. ':idx', key)
  redis.call('ZREM', P .. ':exp', key)
  return redis.call('DEL', P .. ':rec:' .. key)
end
local function clock()  -- Redis's own time: every replica's expiries are on one clock
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function expiry(ttl_ms)  -- a record that never expires sorts after every one that does
  if tonumber(ttl_ms) > 0 then return clock() + tonumber(ttl_ms) / 1000 end
  return FAR + clock()
end
local function sweep()  -- at most BATCH records a call: a long expiry wave never blocks Redis
  local due = redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', clock(), 'LIMIT', 0, BATCH)
  for _, key in ipairs(due) do forget(key) end
  return #due
end
""".replace("BATCH", str(_SWEEP_BATCH)).replace("FAR", repr(FAR))

# ARGV: prefix, key, value, owner, now (the creation time), ttl ms (0: none), size
_PUT = _FORGET + """
local key, owner, now = ARGV[2], ARGV[4], ARGV[5]
local rec = P .. ':rec:' .. key
local created = redis.call('HGET', rec, 'c') or now  -- written again: it keeps its creation time
local old = redis.call('HGET', P .. ':meta', key)
if old then
  local size, was = string.match(old, '^(%d+):(.*)$')
  redis.call('DECRBY', P .. ':bytes', size)
  redis.call('DECRBY', P .. ':bytes:o:' .. was, size)
  if was ~= owner then
    redis.call('ZREM', P .. ':idx:o:' .. was, key)
    redis.call('ZREM', P .. ':exp:o:' .. was, key)
  end
end
redis.call('HSET', rec, 'v', ARGV[3], 'o', owner, 'c', created)
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', rec, ARGV[6]) else redis.call('PERSIST', rec) end
redis.call('HSET', P .. ':meta', key, ARGV[7] .. ':' .. owner)
redis.call('ZADD', P .. ':idx', created, key)
redis.call('ZADD', P .. ':idx:o:' .. owner, created, key)
local expires = expiry(ARGV[6])
redis.call('ZADD', P .. ':exp', expires, key)
redis.call('ZADD', P .. ':exp:o:' .. owner, expires, key)
redis.call('INCRBY', P .. ':bytes', ARGV[7])
redis.call('INCRBY', P .. ':bytes:o:' .. owner, ARGV[7])
return 1
"""

# ARGV: prefix, key
_DELETE = _FORGET + "return forget(ARGV[2])"

# ARGV: prefix, ttl ms, keys...
_TOUCH = _FORGET + """
local expires = expiry(ARGV[2])
for i = 3, #ARGV do
  local key = ARGV[i]
  local meta = redis.call('HGET', P .. ':meta', key)
  if meta and redis.call('PEXPIRE', P .. ':rec:' .. key, ARGV[2]) == 1 then
    local owner = string.match(meta, '^%d+:(.*)$')
    redis.call('ZADD', P .. ':exp', expires, key)
    redis.call('ZADD', P .. ':exp:o:' .. owner, expires, key)
  end
end
return 1
"""

# ARGV: prefix
_SWEEP = _FORGET + "return sweep()"

# ARGV: prefix, owner ("" with no owner: the space), has owner (0/1); swept first by the caller
_SIZE = _FORGET + """
local counter = ARGV[3] == '1' and (P .. ':bytes:o:' .. ARGV[2]) or (P .. ':bytes')
return tonumber(redis.call('GET', counter) or '0')
"""

# ARGV: prefix, owner, has owner (0/1), max bytes; swept first by the caller
_TRIM = _FORGET + """
sweep()
local counter, order = P .. ':bytes', P .. ':exp'
if ARGV[3] == '1' then counter, order = P .. ':bytes:o:' .. ARGV[2], P .. ':exp:o:' .. ARGV[2] end
local removed = 0
while tonumber(redis.call('GET', counter) or '0') > tonumber(ARGV[4]) do
  local soonest = redis.call('ZRANGE', order, 0, 0)
  if #soonest == 0 then redis.call('SET', counter, 0) break end
  forget(soonest[1])
  removed = removed + 1
end
return removed
"""

_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens_minute = tonumber(redis.call('GET', KEYS[2]) or '0')
local tokens_day = tonumber(redis.call('GET', KEYS[3]) or '0')
local stale = tonumber(ARGV[7])
redis.call('SET', ARGV[10] .. ARGV[11], '1', 'PX', ARGV[12])  -- this holder is alive
local reserved, running = 0, 0
local slots = redis.call('HGETALL', KEYS[4])
for i = 1, #slots, 2 do
  local tokens, started, holder = string.match(slots[i + 1], '^(%d+):([%d.]+):?(.*)$')
  if tonumber(started) < stale or (holder ~= '' and redis.call('EXISTS', ARGV[10] .. holder) == 0) then
    redis.call('HDEL', KEYS[4], slots[i])
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
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[8] .. ':' .. ARGV[5] .. ':' .. ARGV[11])
  redis.call('EXPIRE', KEYS[4], ARGV[9])
  reserved = reserved + want
  running = running + 1
end
return {verdict, requests, tokens_minute, tokens_day, reserved, running}
"""
_LEASES = "fgw:lease:"


class RedisStore:
    name = "redis"

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.clock = clock
        self.lease = LEASE
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._put = self.client.register_script(_PUT)
        self._delete = self.client.register_script(_DELETE)
        self._touch = self.client.register_script(_TOUCH)
        self._sweep = self.client.register_script(_SWEEP)
        self._size = self.client.register_script(_SIZE)
        self._trim = self.client.register_script(_TRIM)
        self._admit = self.client.register_script(_ADMIT)
        self._migrated = False

    async def _ready(self) -> None:
        if not self._migrated:
            await _migrate(self)
            self._migrated = True

    # --- records ----------------------------------------------------------------------------------------------

    @_down
    async def put(self, space: str, key: str, value: bytes, *, owner: str = "", ttl: float | None = None) -> None:
        await self._ready()
        stored = pack(value)
        now = self.clock()
        await self._put(args=[_prefix(space), key, stored, owner, now, int(ttl * 1000) if ttl else 0, len(stored)])

    @_down
    async def get(self, space: str, key: str) -> Record | None:
        found = await self.get_many(space, [key])
        return found.get(key)

    @_down
    async def get_many(self, space: str, keys: list[str]) -> dict[str, Record]:
        if not keys:
            return {}
        await self._ready()
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(_record(space, key))
                pipe.pttl(_record(space, key))
            replies = await pipe.execute()
        now = self.clock()
        out: dict[str, Record] = {}
        for i, key in enumerate(keys):
            found, ttl = cast(dict[bytes, bytes], replies[2 * i]), replies[2 * i + 1]
            if found and b"v" in found:
                out[key] = Record(key, found[b"o"].decode(), unpack(found[b"v"]), float(found[b"c"]),
                                  now + ttl / 1000 if ttl and ttl > 0 else None)
        return out

    @_down
    async def delete(self, space: str, key: str) -> bool:
        await self._ready()
        return bool(await self._delete(args=[_prefix(space), key]))

    @_down
    async def touch(self, space: str, keys: list[str], ttl: float) -> None:
        if keys:
            await self._ready()
            await self._touch(args=[_prefix(space), int(ttl * 1000), *keys])

    @_down
    async def scan(self, space: str, *, owner: str | None = None, after: str | None = None, limit: int = 100,
                   newest_first: bool = False) -> list[Record]:
        await self._ready()
        index = f"{_prefix(space)}:idx" if owner is None else f"{_prefix(space)}:idx:o:{owner}"
        rank, span = (self.client.zrevrank, self.client.zrevrange) if newest_first else \
            (self.client.zrank, self.client.zrange)
        start = 0
        if after is not None:
            found = cast(int | None, await rank(index, after))
            start = found + 1 if found is not None else await self.client.zcard(index)
        out: list[Record] = []
        while len(out) < limit:
            keys = [k.decode() for k in cast(list[bytes], await span(index, start, start + limit - 1))]
            if not keys:
                break
            records = await self.get_many(space, keys)
            start += len(keys)
            for key in keys:
                record = records.get(key)
                if record is None:  # gone (expired, evicted): its entries go too, so the next pages shift down
                    await self._delete(args=[_prefix(space), key])
                    start -= 1
                elif len(out) < limit:
                    out.append(record)
        return out

    @_down
    async def size(self, space: str, owner: str | None = None) -> int:
        await self.sweep(space)
        return int(await self._size(args=[_prefix(space), owner or "", int(owner is not None)]))

    @_down
    async def trim(self, space: str, max_bytes: int, *, owner: str | None = None) -> int:
        await self.sweep(space)
        return int(await self._trim(args=[_prefix(space), owner or "", int(owner is not None), max_bytes]))

    @_down
    async def sweep(self, space: str) -> int:
        """Every expired record, a bounded batch per script call (Redis is never blocked for long)."""
        await self._ready()
        gone = 0
        while True:
            swept = int(await self._sweep(args=[_prefix(space)]))
            gone += swept
            if swept < _SWEEP_BATCH:
                return gone

    # --- usage tallies ------------------------------------------------------------------------------------------

    @_down
    async def add_tallies(self, space: str, tallies: list[Tally], keep: dict[int, float]) -> None:
        """One hash per bucket (``fgw:t:<space>:<width>:<start>``), a field per dimensions and counter, added to with
        HINCRBYFLOAT in one MULTI: every replica adds into the same buckets, and a flush counts whole or not at all."""
        if not tallies:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            expiries: dict[str, int] = {}
            for tally in tallies:
                bucket = _bucket(space, tally.width, tally.start)
                prefix = _SEP.join(tally.dims) + _SEP
                for counter, value in zip(COUNTERS, tally.counts, strict=True):
                    if value:
                        pipe.hincrbyfloat(bucket, prefix + counter, value)
                expiries[bucket] = int(tally.start + tally.width + keep[tally.width])
            for bucket, at in expiries.items():
                pipe.expireat(bucket, at)
            await pipe.execute()

    @_down
    async def tallies(self, space: str, width: int, start: int, end: int, key: str | None = None) -> list[Tally]:
        first = -(-start // width) * width  # the first bucket starting at or after ``start``
        starts = list(range(first, end, width))
        out: list[Tally] = []
        for part in range(0, len(starts), 500):
            chunk = starts[part:part + 500]
            async with self.client.pipeline(transaction=False) as pipe:
                for at in chunk:
                    pipe.hgetall(_bucket(space, width, at))
                replies = await pipe.execute()
            for at, fields in zip(chunk, replies, strict=True):
                rows: dict[tuple[str, ...], list[float]] = {}
                for name, value in cast(dict[bytes, bytes], fields).items():
                    *dims, counter = name.decode().split(_SEP)
                    if (key is not None and dims[0] != key) or counter not in _COUNTER_AT:
                        continue
                    rows.setdefault(tuple(dims), [0.0] * len(COUNTERS))[_COUNTER_AT[counter]] = float(value)
                out += [Tally(width, at, dims, tuple(counts)) for dims, counts in rows.items()]
        return out

    # --- quotas -------------------------------------------------------------------------------------------------

    @_down
    async def heartbeat(self) -> None:
        await self.client.set(_LEASES + self.holder, b"1", px=int(self.lease * 1000))

    @_down
    async def admit(self, name: str, limits: Limits, slot: str, tokens: int, stale_after: float) -> Decision:
        now = self.clock()
        minute, day, minute_resets, day_resets = windows(now)
        prefix = f"fgw:quota:{name}"
        result = await self._admit(
            keys=[f"{prefix}:req:{minute}", f"{prefix}:tok:{minute}", f"{prefix}:tokd:{day}", f"{prefix}:slots"],
            args=[limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day, limits.max_concurrency,
                  now, slot, now - stale_after, limits.clamp(tokens), int(stale_after) + 60, _LEASES, self.holder,
                  int(self.lease * 1000)])
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
        import redis

        with contextlib.suppress(redis.RedisError, OSError):  # a clean stop: this holder's slots are free at once
            await self.client.delete(_LEASES + self.holder)
        await self.client.aclose()


_SEP = "\x1f"  # between a tally field's dimensions and its counter (never in a name: the usage book drops it)
_COUNTER_AT = {name: at for at, name in enumerate(COUNTERS)}


def _bucket(space: str, width: int, start: int) -> str:
    return f"fgw:t:{space}:{width}:{start}"


def _prefix(space: str) -> str:
    return f"fgw:s:{space}"


def _record(space: str, key: str) -> str:
    return f"{_prefix(space)}:rec:{key}"


async def _migrate(store: RedisStore) -> None:
    """Records of an earlier version (``fgw:rec:<space>:<key>``, one index by age and a byte counter that kept
    counting expired records) are moved into this layout once; the old keys go."""
    client = store.client
    if int(await client.get("fgw:schema") or 0) >= SCHEMA_VERSION:
        return
    async for raw in client.scan_iter(match="fgw:idx:*", count=500):
        index = raw.decode()
        if ":owner:" in index:
            await client.delete(index)
            continue
        space = index.removeprefix("fgw:idx:")
        for member in cast(list[bytes], await client.zrange(index, 0, -1)):
            key = member.decode()
            old = f"fgw:rec:{space}:{key}"
            found = cast(dict[bytes, bytes], await client.hgetall(old))
            ttl = await client.pttl(old)
            if found and b"v" in found:
                await store._put(args=[_prefix(space), key, found[b"v"], found.get(b"o", b"").decode(), store.clock(),
                                       ttl if ttl and ttl > 0 else 0, len(found[b"v"])])
                await client.hset(_record(space, key), "c", found.get(b"c", str(store.clock()).encode()))
            await client.delete(old)
        await client.delete(index, f"fgw:bytes:{space}")
    await client.set("fgw:schema", SCHEMA_VERSION)
