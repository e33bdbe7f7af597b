"""Per-key quotas: requests and tokens per minute, tokens per day, requests at once — held together by every
replica when they share Redis (``GATEWAY_REDIS_URL``), per process without it.

Windows are fixed (the current UTC minute, the current UTC day): one counter each, so a check is one Redis
round trip and every replica sees the same numbers. The price of fixed windows: a key can spend its minute's
quota at the end of one minute and again at the start of the next. A request is admitted if the key is under
every limit *now*; its tokens are charged when its usage comes back (streams included), so the request that
crosses a token limit completes and the next one is refused. Requests at once are a sorted set of request ids
(a replica that dies mid-request cannot leak a slot: entries older than the total timeout are dropped).

The admission check and the increments run as one Lua script: atomic across replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from app.access.keys import ApiKey

log = logging.getLogger("foundry_gateway.quota")
REASONS = {1: "requests_per_minute", 2: "tokens_per_minute", 3: "tokens_per_day", 4: "max_concurrency"}

_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens_minute = tonumber(redis.call('GET', KEYS[2]) or '0')
local tokens_day = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[7])
local running = redis.call('ZCARD', KEYS[4])
local rpm, tpm, tpd, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local verdict = 0
if rpm > 0 and requests >= rpm then verdict = 1
elseif tpm > 0 and tokens_minute >= tpm then verdict = 2
elseif tpd > 0 and tokens_day >= tpd then verdict = 3
elseif most > 0 and running >= most then verdict = 4 end
if verdict == 0 then
  requests = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], 120)
  if most > 0 then
    redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
    redis.call('EXPIRE', KEYS[4], ARGV[8])
    running = running + 1
  end
end
return {verdict, requests, tokens_minute, tokens_day, running}
"""


@dataclass(frozen=True, slots=True)
class Usage:
    """A key's counters now, and when each window resets (epoch seconds)."""

    requests: int
    tokens_minute: int
    tokens_day: int
    running: int
    minute_resets: float
    day_resets: float


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    reason: str | None  # the limit it is over
    usage: Usage


def windows(now: float) -> tuple[int, int, float, float]:
    """(minute number, day number, minute reset, day reset) for UTC epoch seconds ``now``."""
    minute, day = int(now // 60), int(now // 86400)
    return minute, day, (minute + 1) * 60.0, (day + 1) * 86400.0


class Store(Protocol):
    async def admit(self, key: ApiKey, request_id: str, stale_after: float) -> Decision: ...

    async def charge(self, key: ApiKey, request_id: str, tokens: int) -> None: ...


class MemoryStore:
    """The same counters in this process (each replica holds a key to its quota on its own)."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.counters: dict[tuple[str, str, int], int] = {}
        self.running: dict[str, dict[str, float]] = {}

    async def admit(self, key: ApiKey, request_id: str, stale_after: float) -> Decision:
        now = self.clock()
        minute, day, minute_resets, day_resets = windows(now)
        requests = self.counters.get((key.name, "requests", minute), 0)
        tokens_minute = self.counters.get((key.name, "tokens", minute), 0)
        tokens_day = self.counters.get((key.name, "tokens_day", day), 0)
        running = self.running.setdefault(key.name, {})
        for rid in [r for r, started in running.items() if started < now - stale_after]:
            del running[rid]
        verdict = _verdict(key, requests, tokens_minute, tokens_day, len(running))
        if verdict == 0:
            requests += 1
            self.counters[(key.name, "requests", minute)] = requests
            if key.max_concurrency:
                running[request_id] = now
        self._prune(minute, day)
        usage = Usage(requests, tokens_minute, tokens_day, len(running), minute_resets, day_resets)
        return Decision(verdict == 0, REASONS.get(verdict), usage)

    async def charge(self, key: ApiKey, request_id: str, tokens: int) -> None:
        minute, day, _, _ = windows(self.clock())
        for name, window in (("tokens", minute), ("tokens_day", day)):
            self.counters[(key.name, name, window)] = self.counters.get((key.name, name, window), 0) + tokens
        self.running.get(key.name, {}).pop(request_id, None)

    def _prune(self, minute: int, day: int) -> None:
        for counter in [c for c in self.counters if c[2] < (day if c[1] == "tokens_day" else minute) - 1]:
            del self.counters[counter]


class RedisStore:
    """The counters in Redis, shared by every replica; one Lua script per admission."""

    def __init__(self, url: str, clock: Any = time.time) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.script = self.client.register_script(_ADMIT)
        self.clock = clock

    async def admit(self, key: ApiKey, request_id: str, stale_after: float) -> Decision:
        now = self.clock()
        minute, day, minute_resets, day_resets = windows(now)
        prefix = f"fgw:quota:{key.name}"
        result = await self.script(
            keys=[f"{prefix}:req:{minute}", f"{prefix}:tok:{minute}", f"{prefix}:tokd:{day}", f"{prefix}:running"],
            args=[key.requests_per_minute, key.tokens_per_minute, key.tokens_per_day, key.max_concurrency, now,
                  request_id, now - stale_after, int(stale_after) + 60])
        verdict, requests, tokens_minute, tokens_day, running = (int(x) for x in result)
        usage = Usage(requests, tokens_minute, tokens_day, running, minute_resets, day_resets)
        return Decision(verdict == 0, REASONS.get(verdict), usage)

    async def charge(self, key: ApiKey, request_id: str, tokens: int) -> None:
        minute, day, _, _ = windows(self.clock())
        prefix = f"fgw:quota:{key.name}"
        async with self.client.pipeline(transaction=True) as pipe:
            if tokens:
                for counter, ttl in ((f"{prefix}:tok:{minute}", 120), (f"{prefix}:tokd:{day}", 2 * 86400)):
                    pipe.incrby(counter, tokens)
                    pipe.expire(counter, ttl)
            pipe.zrem(f"{prefix}:running", request_id)
            await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()


def _verdict(key: ApiKey, requests: int, tokens_minute: int, tokens_day: int, running: int) -> int:
    if key.requests_per_minute and requests >= key.requests_per_minute:
        return 1
    if key.tokens_per_minute and tokens_minute >= key.tokens_per_minute:
        return 2
    if key.tokens_per_day and tokens_day >= key.tokens_per_day:
        return 3
    if key.max_concurrency and running >= key.max_concurrency:
        return 4
    return 0


class StoreDown(Exception):
    """Redis did not answer and the gateway is set to fail closed."""


async def guarded(call: Any, *, fail_open: bool, on_error: Any) -> Any:
    """A store call that may find Redis down: fail open (None: no verdict, let it through, said loudly) or
    closed (StoreDown)."""
    import redis

    try:
        return await asyncio.wait_for(call, timeout=2.0)
    except (redis.RedisError, OSError, TimeoutError) as exc:
        on_error(exc)
        if fail_open:
            return None
        raise StoreDown(str(exc)) from None
