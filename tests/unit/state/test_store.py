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


# --- what is live, per owner, in order (issue 31) ---------------------------------------------------------------


async def _wait_gone(store: StateStore, space: str, key: str) -> None:
    """Redis expires records by its own clock: wait for that event, bounded."""
    for _ in range(300):
        if await store.get(space, key) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{space}/{key} never expired")


def test_a_trim_counts_only_live_records_and_keeps_every_live_one(make: Callable[[Clock], StateStore]) -> None:
    """Finding 2: records that expired are not counted against the bound, so a trim under a bound the live
    records fit in removes none of them; the indexes of the dead ones are pruned."""
    clock = Clock()
    clock.now = time.time()

    async def scenario() -> None:
        store = make(clock)
        try:
            for i in range(50):
                await store.put("responses", f"dead{i}", bytes([i]) * 300, owner="team-a", ttl=0.2)
            for i in range(50):
                await store.put("responses", f"live{i}", bytes([i]) * 300, owner="team-a", ttl=3600)
            clock.now += 1.0
            await _wait_gone(store, "responses", "dead49")
            assert await store.size("responses") == 50 * 301
            assert await store.trim("responses", 50 * 301) == 0
            assert len(await store.scan("responses", limit=1000)) == 50
            assert await store.sweep("responses") >= 0
            assert len(await store.scan("responses", owner="team-a", limit=1000)) == 50
            assert await store.size("responses", owner="team-a") == 50 * 301
            if isinstance(store, RedisStore):  # no index keeps a dead id
                client = store.client
                for index in (b"fgw:s:responses:idx", b"fgw:s:responses:idx:o:team-a", b"fgw:s:responses:exp"):
                    assert await client.zcard(index) == 50
        finally:
            await store.aclose()

    run(scenario())


def test_a_trim_by_owner_never_touches_another_owner(make: Callable[[Clock], StateStore]) -> None:
    """Finding 4: the bound is per owner; one owner's writes trim only its own oldest."""
    clock = Clock()

    async def scenario() -> None:
        store = make(clock)
        try:
            for i in range(3):
                clock.now += 1
                await store.put("responses", f"b{i}", bytes([i]) * 300, owner="team-b", ttl=3600)
            for i in range(5):
                clock.now += 1
                await store.put("responses", f"a{i}", bytes([i]) * 300, owner="team-a", ttl=3600)
            assert await store.trim("responses", 2 * 301, owner="team-a") == 3
            assert [r.key for r in await store.scan("responses", owner="team-a")] == ["a3", "a4"]
            assert [r.key for r in await store.scan("responses", owner="team-b")] == ["b0", "b1", "b2"]
            assert await store.size("responses", owner="team-b") == 3 * 301
            assert await store.size("responses") == 5 * 301
        finally:
            await store.aclose()

    run(scenario())


def test_a_rewrite_keeps_the_creation_time_and_scans_go_both_ways(make: Callable[[Clock], StateStore]) -> None:
    """Finding 15: a record written again (a batch after each line) keeps its place; newest first pages too."""
    clock = Clock()

    async def scenario() -> None:
        store = make(clock)
        try:
            for i in range(4):
                clock.now += 1
                await store.put("batches", f"k{i}", b"v", owner="team-a")
            clock.now += 1
            await store.put("batches", "k0", b"updated", owner="team-a")
            found = await store.get("batches", "k0")
            assert found is not None and found.value == b"updated" and found.created == clock.now - 4
            assert [r.key for r in await store.scan("batches")] == ["k0", "k1", "k2", "k3"]
            assert [r.key for r in await store.scan("batches", newest_first=True, limit=2)] == ["k3", "k2"]
            assert [r.key for r in await store.scan("batches", owner="team-a", newest_first=True, after="k2")] == \
                ["k1", "k0"]
            many = await store.get_many("batches", ["k1", "nope", "k3"])
            assert sorted(many) == ["k1", "k3"] and many["k3"].value == b"v"
        finally:
            await store.aclose()

    run(scenario())


def test_touch_extends_the_life_of_records(make: Callable[[Clock], StateStore]) -> None:
    clock = Clock()
    clock.now = time.time()

    async def scenario() -> None:
        store = make(clock)
        try:
            await store.put("responses", "old", b"v", owner="o", ttl=0.3)
            await store.put("responses", "other", b"v", owner="o", ttl=0.3)
            await store.touch("responses", ["old"], ttl=3600)
            clock.now += 1.0
            await _wait_gone(store, "responses", "other")
            found = await store.get("responses", "old")
            assert found is not None and found.expires is not None and found.expires > clock.now + 3000
        finally:
            await store.aclose()

    run(scenario())


def test_a_dead_holders_slots_are_freed_within_seconds(make: Callable[[Clock], StateStore],
                                                       tmp_path: Path) -> None:
    """Finding 8: a gateway SIGKILLed while holding a key's only slot does not lock the key out for
    GATEWAY_TOTAL_TIMEOUT: its lease lapses (no heartbeat) and another holder's admission frees its slots."""
    clock = Clock()
    clock.now = time.time()

    async def scenario() -> None:
        dead, alive = make(clock), make(clock)
        for store in (dead, alive):
            store.lease = 0.3  # type: ignore[attr-defined]
        try:
            limits = Limits(max_concurrency=1)
            assert (await dead.admit("team", limits, "held", 0, 900)).admitted
            await alive.heartbeat()
            assert not (await alive.admit("team", limits, "s1", 0, 900)).admitted
            clock.now += 1.0  # the dead one's lease runs out (Redis: by its own clock)
            for _ in range(300):
                await alive.heartbeat()
                decision = await alive.admit("team", limits, "s2", 0, 900)
                if decision.admitted:
                    break
                await asyncio.sleep(0.01)
            assert decision.admitted
            await alive.settle("team", "s2", 0)
            await alive.heartbeat()  # a live holder's slot is never taken
            assert (await alive.admit("team", limits, "s3", 0, 900)).admitted
            clock.now += 0.1
            assert not (await alive.admit("team", limits, "s4", 0, 900)).admitted
        finally:
            for store in (dead, alive):
                await store.aclose()

    run(scenario())


def test_redis_records_of_the_earlier_layout_are_moved_once(redis_url: str) -> None:
    """A Redis written by the version before (one index by age, a byte counter that counted expired records)
    is read after the upgrade, with live sizes."""
    import redis

    from app.state.base import pack

    old = redis.Redis.from_url(redis_url)
    old.flushall()
    for i, owner in enumerate(("team-a", "team-b")):
        old.hset(f"fgw:rec:responses:r{i}", mapping={"v": pack(b"x" * 10), "o": owner, "c": 100 + i, "s": 11})
        old.zadd("fgw:idx:responses", {f"r{i}": 100 + i})
        old.zadd(f"fgw:idx:responses:owner:{owner}", {f"r{i}": 100 + i})
    old.zadd("fgw:idx:responses", {"expired-long-ago": 50})
    old.set("fgw:bytes:responses", 99_999)

    async def scenario() -> None:
        store = RedisStore(redis_url)
        try:
            assert [r.key for r in await store.scan("responses")] == ["r0", "r1"]
            assert (await store.get("responses", "r1")).owner == "team-b"  # type: ignore[union-attr]
            assert await store.size("responses") == 2 * 11
            assert await store.size("responses", owner="team-a") == 11
        finally:
            await store.aclose()

    run(scenario())
    assert not old.exists("fgw:idx:responses", "fgw:bytes:responses", "fgw:rec:responses:r0")


def test_redis_expiries_are_on_redis_s_clock_not_a_replica_s(redis_url: str) -> None:
    """A replica whose clock runs an hour ahead sweeps nothing another replica keeps alive (review of issue 31)."""
    import redis

    redis.Redis.from_url(redis_url).flushall()
    ahead = Clock()
    ahead.now = time.time() + 3700

    async def scenario() -> None:
        keeper, skewed = RedisStore(redis_url), RedisStore(redis_url, clock=ahead)
        try:
            await keeper.put("responses", "r1", b"v", owner="team-a", ttl=3600)
            assert await skewed.size("responses") == 2 and await skewed.sweep("responses") == 0
            assert await keeper.get("responses", "r1") is not None
        finally:
            await keeper.aclose()
            await skewed.aclose()

    run(scenario())


def test_a_sqlite_file_of_the_version_before_keeps_working_beside_it(tmp_path: Path) -> None:
    """Its quota slots (table ``slots``, by process id) are left alone: a process of the old version sharing the
    file during an upgrade goes on admitting; the new one uses its own table."""
    import sqlite3

    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE slots (name TEXT NOT NULL, slot TEXT NOT NULL, tokens INTEGER NOT NULL, started REAL "
                   "NOT NULL, pid INTEGER NOT NULL, pid_started REAL NOT NULL, PRIMARY KEY (name, slot)) WITHOUT ROWID")
        db.execute("INSERT INTO slots VALUES ('team', 'old', 5, 1.0, 1, 1.0)")

    async def scenario() -> None:
        store = SqliteStore(path)
        try:
            assert (await store.admit("team", Limits(max_concurrency=1), "new", 0, 60)).admitted
        finally:
            await store.aclose()

    run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT slot FROM slots").fetchall() == [("old",)]
        db.execute("INSERT INTO slots VALUES ('team', 'old2', 5, 1.0, 1, 1.0)")  # what the old version writes
