"""The usage book (``app.access.usage``) over a real SQLite store: requests counted in memory, flushed in one batch
into minute, hour and day buckets, read back grouped and paged in OpenAI's shape; a store that fails keeps what it
could not write; a key's spend for its budgets; the query's parameters checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.access.usage import UsageBook, counter, month_window, parse_query
from app.core.errors import GatewayError
from app.core.metrics import Metrics
from app.state.sqlite import SqliteStore

T0 = 1_800_000_000 // 86400 * 86400 + 3600 * 10 + 5  # 10:00:05 UTC on a day in 2027


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def book_on(tmp_path: Path, clock: Clock, **kw: object) -> tuple[UsageBook, SqliteStore, Metrics]:
    store = SqliteStore(tmp_path / "state.sqlite3", clock=clock)
    metrics = Metrics()
    return UsageBook(store, metrics, clock=clock, **kw), store, metrics  # type: ignore[arg-type]


def spend(book: UsageBook, key: str, model: str, tokens_in: int, tokens_out: int, *, cost: float = 0.0,
          endpoint: str = "chat", task: str = "chat") -> None:
    counts = [(counter("input_tokens"), tokens_in), (counter("output_tokens"), tokens_out),
              (counter("runtime_seconds"), 0.5), (counter("latency_seconds"), 1.0)]
    if cost:
        counts += [(counter("cost"), cost), (counter("priced_requests"), 1)]
    book.add((key, model, endpoint, task, "", "0"), counts)


def test_two_keys_two_models_read_back_grouped_each_way(tmp_path: Path) -> None:
    clock = Clock()
    book, store, _ = book_on(tmp_path, clock)

    async def scenario() -> None:
        spend(book, "alpha", "m1", 10, 20, cost=0.5)
        spend(book, "alpha", "m2", 1, 2)
        spend(book, "beta", "m1", 100, 200, endpoint="completions", task="code")
        before = await book.report(parse_query({"bucket_width": ["1h"]}, clock.now))  # not flushed: still seen
        assert written_totals(before) == (3, 111, 222)
        assert await book.flush() == 9  # 3 rows × (minute, hour, day)
        assert await book.flush() == 0
        for width in ("1m", "1h", "1d"):
            page = await book.report(parse_query({"bucket_width": [width], "group_by": ["key,model"]}, clock.now))
            rows = {(r["key"], r["model"]): r for b in page["data"] for r in b["results"]}
            assert set(rows) == {("alpha", "m1"), ("alpha", "m2"), ("beta", "m1")}
            assert rows[("alpha", "m1")]["input_tokens"] == 10 and rows[("alpha", "m1")]["cost"] == 0.5
            assert rows[("alpha", "m2")]["cost"] is None  # no price for it
            assert rows[("beta", "m1")]["output_tokens"] == 200 and rows[("beta", "m1")]["runtime_seconds"] == 0.5
            assert rows[("beta", "m1")]["endpoint"] is None  # not grouped by: null, as OpenAI's
        by_endpoint = await book.report(parse_query({"group_by": ["endpoint"]}, clock.now))
        assert {r["endpoint"]: r["num_model_requests"] for b in by_endpoint["data"] for r in b["results"]} == \
            {"chat": 2, "completions": 1}
        by_task = await book.report(parse_query({"group_by": ["task"]}, clock.now))
        assert {r["task"]: r["input_tokens"] for b in by_task["data"] for r in b["results"]} == \
            {"chat": 11, "code": 100}
        mine = await book.report(parse_query({"key": ["beta"]}, clock.now))
        assert written_totals(mine) == (1, 100, 200)
        await store.aclose()

    asyncio.run(scenario())


def written_totals(page: dict[str, object]) -> tuple[int, int, int]:
    rows = [r for b in page["data"] for r in b["results"]]  # type: ignore[attr-defined]
    return (sum(r["num_model_requests"] for r in rows), sum(r["input_tokens"] for r in rows),
            sum(r["output_tokens"] for r in rows))


def test_pages_of_buckets_every_bucket_present(tmp_path: Path) -> None:
    clock = Clock()
    book, store, _ = book_on(tmp_path, clock)

    async def scenario() -> None:
        spend(book, "alpha", "m1", 1, 1)
        clock.now += 3 * 3600
        spend(book, "alpha", "m1", 2, 2)
        query = {"bucket_width": ["1h"], "start_time": [str(T0 - 5)], "end_time": [str(T0 - 5 + 5 * 3600)],
                 "limit": ["2"]}
        first = await book.report(parse_query(query, clock.now))
        assert [len(b["results"]) for b in first["data"]] == [1, 0] and first["has_more"]
        assert first["data"][0]["start_time"] == T0 - 5 and first["data"][0]["end_time"] == T0 - 5 + 3600
        second = await book.report(parse_query({**query, "page": [first["next_page"]]}, clock.now))
        assert [len(b["results"]) for b in second["data"]] == [0, 1] and second["has_more"]
        third = await book.report(parse_query({**query, "page": [second["next_page"]]}, clock.now))
        assert len(third["data"]) == 1 and not third["has_more"] and third["next_page"] is None
        await store.aclose()

    asyncio.run(scenario())


def test_a_store_that_fails_keeps_the_usage_for_the_next_flush(tmp_path: Path) -> None:
    clock = Clock()
    broken = tmp_path / "not-a-file"
    broken.mkdir()
    metrics = Metrics()
    book = UsageBook(SqliteStore(broken, clock=clock), metrics, clock=clock)

    async def scenario() -> None:
        spend(book, "alpha", "m1", 5, 5)
        assert await book.flush() == 0  # the store is down: kept
        assert metrics.usage_flush_errors._value.get() == 1
        book.store = SqliteStore(tmp_path / "state.sqlite3", clock=clock)  # it is back
        spend(book, "alpha", "m1", 1, 1)
        assert await book.flush() == 3
        page = await book.report(parse_query({}, clock.now))
        assert written_totals(page) == (2, 6, 6)
        await book.store.aclose()

    asyncio.run(scenario())


def test_spent_counts_the_day_cost_and_the_month_tokens(tmp_path: Path) -> None:
    clock = Clock()
    book, store, _ = book_on(tmp_path, clock)

    async def scenario() -> None:
        spend(book, "alpha", "m1", 100, 100, cost=2.0)
        await book.flush()
        clock.now += 86400  # the next day, same month (T0 is the 15th)
        spend(book, "alpha", "m1", 10, 10, cost=0.5)
        spend(book, "beta", "m1", 999, 999, cost=9.0)
        spent = await book.spent("alpha")
        assert spent.cost_today == 0.5 and spent.tokens_month == 220
        assert spent.day_resets == (clock.now // 86400 + 1) * 86400
        assert spent.month_resets == month_window(clock.now)[1]
        await store.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(("params", "param"), [
    ({"bucket_width": ["1w"]}, "bucket_width"), ({"group_by": ["colour"]}, "group_by"),
    ({"start_time": ["yesterday"]}, "start_time"), ({"limit": ["0"]}, "limit"), ({"limit": ["32"]}, "limit"),
    ({"start_time": ["200"], "end_time": ["100"]}, "start_time"), ({"page": ["page_x"]}, "page"),
    ({"key": ["a,b"]}, "key"),
])
def test_bad_parameters_are_400s_naming_them(params: dict[str, list[str]], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_query(params, float(T0))
    assert caught.value.status == 400 and caught.value.param == param


def test_month_window_rolls_over_december() -> None:
    import calendar

    start, end = month_window(calendar.timegm((2026, 12, 31, 23, 0, 0)))
    assert start == calendar.timegm((2026, 12, 1, 0, 0, 0)) and end == calendar.timegm((2027, 1, 1, 0, 0, 0))
