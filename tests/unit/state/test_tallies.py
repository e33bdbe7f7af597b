"""Usage tallies in both stores (SQLite in a temp dir, a real redis-server): counters added into buckets — by two
store instances, as two processes would — read back by width, range and key, and expired by width."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from app.state import COUNTERS, StateStore, Tally
from app.state.sqlite import SqliteStore
from tests.unit.state.test_store import Clock, make  # noqa: F401 (the fixture)

KEEP = {60: 86400.0, 3600: 31 * 86400.0, 86400: 90 * 86400.0}


def counts(**values: float) -> tuple[float, ...]:
    return tuple(float(values.get(name, 0)) for name in COUNTERS)


def dims(key: str, model: str) -> tuple[str, ...]:
    return (key, model, "chat", "chat", "", "0")


def test_two_writers_add_into_the_same_buckets(make: Callable[[Clock], StateStore]) -> None:  # noqa: F811
    clock = Clock()
    clock.now = time.time()
    minute = int(clock.now // 60) * 60

    async def scenario() -> None:
        one, two = make(clock), make(clock)
        try:
            await one.add_tallies("usage", [Tally(60, minute, dims("a", "m1"), counts(requests=1, input_tokens=10))],
                                  KEEP)
            await two.add_tallies("usage", [Tally(60, minute, dims("a", "m1"), counts(requests=2, input_tokens=5)),
                                            Tally(60, minute, dims("b", "m2"), counts(requests=1, cost=0.25))], KEEP)
            got = {t.dims: t.counts for t in await one.tallies("usage", 60, minute, minute + 60)}
            assert got[dims("a", "m1")] == counts(requests=3, input_tokens=15)
            assert got[dims("b", "m2")] == counts(requests=1, cost=0.25)
            mine = await one.tallies("usage", 60, minute, minute + 60, key="b")
            assert [t.dims for t in mine] == [dims("b", "m2")]
            assert await one.tallies("usage", 60, minute + 60, minute + 120) == []  # the next minute: nothing
            assert await one.tallies("other-space", 60, minute, minute + 60) == []  # a front's book is apart
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(scenario())


def test_sqlite_minutes_expire_first_hours_and_days_stay(tmp_path: object) -> None:
    from pathlib import Path

    clock = Clock()
    store = SqliteStore(Path(str(tmp_path)) / "state.sqlite3", clock=clock)
    minute = int(clock.now // 60) * 60
    hour, day = minute // 3600 * 3600, minute // 86400 * 86400
    row = counts(requests=4, output_tokens=40)

    async def scenario() -> None:
        try:
            await store.add_tallies("usage", [Tally(60, minute, dims("a", "m"), row), Tally(3600, hour, dims("a", "m"),
                                              row), Tally(86400, day, dims("a", "m"), row)], KEEP)
            clock.now += 2 * 86400  # two days on: the minute is gone, the hour and the day stay
            assert await store.tallies("usage", 60, minute, minute + 60) == []
            assert [t.counts for t in await store.tallies("usage", 3600, hour, hour + 3600)] == [row]
            assert [t.counts for t in await store.tallies("usage", 86400, day, day + 86400)] == [row]
            clock.now += 40 * 86400  # past the hours' 31 days
            assert await store.tallies("usage", 3600, hour, hour + 3600) == []
            assert [t.counts for t in await store.tallies("usage", 86400, day, day + 86400)] == [row]
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_redis_buckets_expire_by_width(redis_url: str) -> None:
    import redis

    from app.state.redis import RedisStore

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    now = time.time()
    minute = int(now // 60) * 60
    store = RedisStore(redis_url)

    async def scenario() -> None:
        try:
            day = minute // 86400 * 86400
            await store.add_tallies("usage", [Tally(60, minute, dims("a", "m"), counts(requests=1)),
                                              Tally(86400, day, dims("a", "m"), counts(requests=1))], KEEP)
        finally:
            await store.aclose()

    asyncio.run(scenario())
    minute_ttl = client.ttl(f"fgw:t:usage:60:{minute}")
    day_ttl = client.ttl(f"fgw:t:usage:86400:{minute // 86400 * 86400}")
    assert 86400 - 5 <= minute_ttl <= 86400 + 60  # a day past the minute's end
    assert 89 * 86400 <= day_ttl <= 91 * 86400
