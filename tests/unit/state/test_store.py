"""The state store's two implementations, SQLite (a file in a temp dir) and Redis (a real redis-server), through
the same tests: records (owner, expiry, listing, trimming, compression) and quotas (windows, reservations,
settlement, slots, atomic under concurrency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.state import StateStore
from app.state.base import Limits
from app.state.redis import RedisStore
from app.state.sqlite import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0 + 5  # five seconds into a minute

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Clock], StateStore]]:
    """A factory of stores of one kind over the same data (a file, or a Redis flushed before the test)."""
    if request.param == "sqlite":
        yield lambda clock: SqliteStore(tmp_path / "state.sqlite3", clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushall()
    yield lambda clock: RedisStore(url, clock=clock)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture()
def clock() -> Clock:
    return Clock()


def test_records_round_trip_with_owner_and_expiry(make: Callable[[Clock], StateStore]) -> None:
    clock = Clock()
    clock.now = time.time()  # Redis expires by its own clock

    async def scenario() -> None:
        store = make(clock)
        try:
            big = b"x" * 10_000  # compressed on the way in, whole on the way out
            await store.put("things", "a", big, owner="team-a", ttl=60)
            await store.put("things", "b", b"small", owner="team-b")
            got = await store.get("things", "a")
            assert got is not None and got.value == big and got.owner == "team-a" and got.expires is not None
            assert (await store.get("things", "b")).expires is None  # type: ignore[union-attr]
            assert await store.get("things", "missing") is None and await store.get("other", "a") is None
            await store.put("things", "a", b"replaced", owner="team-a")
            assert (await store.get("things", "a")).value == b"replaced"  # type: ignore[union-attr]
            assert await store.delete("things", "a") and not await store.delete("things", "a")
            assert await store.get("things", "a") is None
        finally:
            await store.aclose()

    run(scenario())


def test_a_record_past_its_ttl_is_gone(make: Callable[[Clock], StateStore], tmp_path: Path) -> None:
    clock = Clock()
    clock.now = time.time()

    async def scenario() -> None:
        store = make(clock)
        try:
            await store.put("things", "short", b"v", ttl=0.2)
            assert await store.get("things", "short") is not None
            clock.now += 1.0
            for _ in range(100):  # Redis expires it by its own clock: wait for that, bounded
                if await store.get("things", "short") is None:
                    break
                await asyncio.sleep(0.01)
            assert await store.get("things", "short") is None
            assert [r.key for r in await store.scan("things")] == []
        finally:
            await store.aclose()

    run(scenario())


def test_scan_is_oldest_first_by_owner_and_pages(make: Callable[[Clock], StateStore]) -> None:
    clock = Clock()

    async def scenario() -> None:
        store = make(clock)
        try:
            for i in range(7):
                clock.now += 1
                await store.put("batches", f"k{i}", b"v", owner="team-a" if i % 2 == 0 else "team-b")
            assert [r.key for r in await store.scan("batches", limit=3)] == ["k0", "k1", "k2"]
            assert [r.key for r in await store.scan("batches", after="k2", limit=3)] == ["k3", "k4", "k5"]
            assert [r.key for r in await store.scan("batches", owner="team-a")] == ["k0", "k2", "k4", "k6"]
            assert [r.key for r in await store.scan("batches", owner="team-a", after="k2")] == ["k4", "k6"]
        finally:
            await store.aclose()

    run(scenario())


def test_trim_drops_the_oldest_first(make: Callable[[Clock], StateStore]) -> None:
    clock = Clock()

    async def scenario() -> None:
        store = make(clock)
        try:
            for i in range(5):
                clock.now += 1
                await store.put("responses", f"r{i}", bytes([i]) * 300)  # 301 bytes stored each
            removed = await store.trim("responses", 3 * 301)
            assert removed == 2
            assert [r.key for r in await store.scan("responses")] == ["r2", "r3", "r4"]
        finally:
            await store.aclose()

    run(scenario())


def test_quota_windows_reservations_and_settlement(make: Callable[[Clock], StateStore]) -> None:
    clock = Clock()

    async def scenario() -> None:
        store = make(clock)
        try:
            limits = Limits(requests_per_minute=10, tokens_per_minute=100, max_concurrency=2)
            first = await store.admit("team", limits, "s1", 60, 60)
            assert first.admitted and first.usage.reserved == 60 and first.usage.running == 1
            over = await store.admit("team", limits, "s2", 60, 60)  # 60 reserved + 60 > 100
            assert not over.admitted and over.reason == "tokens_per_minute"
            small = await store.admit("team", limits, "s3", 30, 60)
            assert small.admitted and small.usage.reserved == 90
            busy = await store.admit("team", limits, "s4", 1, 60)
            assert not busy.admitted and busy.reason == "max_concurrency"
            await store.settle("team", "s1", 20)  # spent 20 of its 60: 40 back
            after = await store.admit("team", limits, "s5", 50, 60)
            assert after.admitted and after.usage.tokens_minute == 20 and after.usage.reserved == 80
            await store.settle("team", "s3", 0)  # failed: its whole reservation returns
            await store.settle("team", "s5", 0)
            clock.now += 60  # a new minute
            fresh = await store.admit("team", limits, "s6", 10, 60)
            assert fresh.admitted and fresh.usage.requests == 1 and fresh.usage.tokens_minute == 0
        finally:
            await store.aclose()

    run(scenario())


def test_a_request_larger_than_the_limit_runs_alone_and_stale_slots_expire(make: Callable[[Clock], StateStore]
                                                                           ) -> None:
    clock = Clock()

    async def scenario() -> None:
        store = make(clock)
        try:
            limits = Limits(tokens_per_minute=100)
            alone = await store.admit("big", limits, "s1", 500, 30)
            assert alone.admitted and alone.usage.reserved == 100  # clamped to the limit
            assert not (await store.admit("big", limits, "s2", 1, 30)).admitted
            clock.now += 31  # s1's holder died without settling: stale after 30 s, so freed
            assert (await store.admit("big", limits, "s3", 1, 30)).admitted
        finally:
            await store.aclose()

    run(scenario())


def test_concurrent_admissions_from_two_stores_hold_the_limit(make: Callable[[Clock], StateStore]) -> None:
    clock = Clock()

    async def scenario() -> list[bool]:
        stores = [make(clock), make(clock)]  # two replicas, or two workers on one file
        try:
            limits = Limits(requests_per_minute=10)
            decisions = await asyncio.gather(*(stores[i % 2].admit("atomic", limits, f"r{i}", 0, 60)
                                               for i in range(25)))
            return [d.admitted for d in decisions]
        finally:
            for store in stores:
                await store.aclose()

    assert sum(run(scenario())) == 10  # type: ignore[arg-type]
