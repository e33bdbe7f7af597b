"""Who used what: each request's usage added into buckets of time in the state store, and read back grouped.

A request's usage (key, model, endpoint, task, node, batch or not; tokens, runtime seconds, latency, cost) is added
to a small table in memory when it ends, and the table is flushed every ``FLUSH_EVERY`` seconds as one batched
write — off the hot path, so a process killed with SIGKILL loses at most that last half second. Each flush adds
into three widths of bucket at once: the minute, the hour and the day (the rollup is written, not computed later),
and each width is kept for its own time: minutes for a day, hours for 31 days, days for
``GATEWAY_USAGE_RETENTION_DAYS`` — so the store holds a bounded number of rows per key, model and day whatever the
traffic. Every process adds into the same buckets (SQLite upserts, Redis HINCRBYFLOAT): the workers of a host and
the replicas behind one Redis report together.

``report`` answers ``GET /v1/usage`` in the shape of OpenAI's usage API: a page of buckets (``start_time``,
``end_time``, ``results``), grouped by any of ``key``, ``model``, ``endpoint``, ``task``, ``node``, ``batch``.
A front records under its own space (``usage-front``): its nodes' own books (the front's key, on their side) never
add into its totals, even when they share its Redis.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.core.errors import GatewayError
from app.core.metrics import Metrics
from app.state import COUNTERS, DIMENSIONS, StateStore, StoreDown, Tally

log = logging.getLogger("foundry_gateway.usage")
FLUSH_EVERY = 0.5  # seconds between flushes: what a SIGKILL can lose
MAX_PENDING = 20_000  # rows (minute × dimensions) held while the store is down; past it new usage is dropped, counted
MINUTE, HOUR, DAY = 60, 3600, 86400
WIDTHS = {"1m": MINUTE, "1h": HOUR, "1d": DAY}
# buckets per page: OpenAI's defaults and bounds (1d: 7 of at most 31, …)
PAGE = {MINUTE: (60, 1440), HOUR: (24, 168), DAY: (7, 31)}
GROUPS = DIMENSIONS
_AT = {name: at for at, name in enumerate(COUNTERS)}
_N = len(COUNTERS)


@dataclass(frozen=True, slots=True)
class Spent:
    """A key's spend in the windows budgets count: the cost of this UTC day, the tokens of this UTC month."""

    cost_today: float
    tokens_month: int
    day_resets: float  # epoch seconds
    month_resets: float


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: int  # epoch seconds, inclusive (rounded down to a bucket)
    end: int  # exclusive
    width: int
    group_by: tuple[str, ...] = ()
    key: str | None = None  # only this key's usage
    models: frozenset[str] | None = None
    limit: int = 7  # buckets per page
    page: int | None = None  # the bucket start the page begins at (``next_page``)


class UsageBook:
    """Usage of one process, flushed to the store in batches; read back grouped (``report``) or per key (``spent``)."""

    def __init__(self, store: StateStore, metrics: Metrics, *, space: str = "usage", retention_days: int = 90,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = metrics
        self.space = space
        self.clock = clock
        days = max(1, retention_days)
        self.keep = {MINUTE: float(min(days, 1) * DAY), HOUR: float(min(days, 31) * DAY), DAY: float(days * DAY)}
        self._pending: dict[tuple[int, tuple[str, ...]], list[float]] = {}
        self._flushing: dict[tuple[int, tuple[str, ...]], list[float]] = {}
        self._spent: dict[str, tuple[float, Spent]] = {}
        self._lock = asyncio.Lock()

    # --- recording ------------------------------------------------------------------------------------------------

    def add(self, dims: tuple[str, ...], counts: Iterable[tuple[int, float]], at: float | None = None) -> None:
        """Count a request that ended (``counts``: (counter index, value) pairs; ``requests`` is counted here)."""
        minute = int((self.clock() if at is None else at) // MINUTE) * MINUTE
        row = self._pending.get((minute, dims))
        if row is None:
            if len(self._pending) >= MAX_PENDING:  # the store has been down for long: bounded, and said
                self.metrics.usage_dropped.inc()
                return
            row = self._pending[(minute, dims)] = [0.0] * _N
        row[0] += 1
        for at_, value in counts:
            row[at_] += value

    async def flush(self) -> int:
        """Write what was counted since the last flush (kept for the next one if the store is down): rows written."""
        async with self._lock:
            if not self._pending:
                return 0
            self._flushing, self._pending = self._pending, {}
            tallies = _rolled_up(self._flushing)
            try:
                await self.store.add_tallies(self.space, tallies, self.keep)
            except StoreDown as exc:
                for where, row in self._flushing.items():  # back into the table, to go with the next flush
                    _add_into(self._pending, where, row)
                self.metrics.usage_flush_errors.inc()
                log.warning("usage not written yet (kept for the next flush): %s", exc)
                return 0
            finally:
                self._flushing = {}
            return len(tallies)

    async def run(self) -> None:
        """Flush every ``FLUSH_EVERY`` seconds until cancelled (then once more: a clean stop loses nothing)."""
        try:
            while True:
                await asyncio.sleep(FLUSH_EVERY)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    # --- reading --------------------------------------------------------------------------------------------------

    async def buckets(self, width: int, start: int, end: int, key: str | None = None) -> list[Tally]:
        """The store's buckets and what this process has not flushed yet, at ``width``."""
        tallies = await self.store.tallies(self.space, width, start, end, key)
        local: dict[tuple[int, tuple[str, ...]], list[float]] = {}
        for table in (self._flushing, self._pending):
            for (minute, dims), row in table.items():
                at = minute // width * width
                if start <= at < end and (key is None or dims[0] == key):
                    _add_into(local, (at, dims), row)
        return tallies + [Tally(width, at, dims, tuple(row)) for (at, dims), row in local.items()]

    async def spent(self, key: str, *, fresh_for: float = 1.0) -> Spent:
        """What ``key`` spent today and this month (read from the store at most every ``fresh_for`` seconds)."""
        now = self.clock()
        cached = self._spent.get(key)
        if cached is not None and now - cached[0] < fresh_for:
            return cached[1]
        day = int(now // DAY) * DAY
        month, month_resets = month_window(now)
        cost = 0.0
        tokens = 0.0
        for tally in await self.buckets(DAY, month, day + DAY, key):
            tokens += tally.counts[_AT["input_tokens"]] + tally.counts[_AT["output_tokens"]]
            if tally.start == day:
                cost += tally.counts[_AT["cost"]]
        spent = Spent(cost, int(tokens), float(day + DAY), month_resets)
        if len(self._spent) > 10_000:
            self._spent.clear()
        self._spent[key] = (now, spent)
        return spent

    async def report(self, query: UsageQuery) -> dict[str, Any]:
        """A page of buckets in the shape of OpenAI's usage API (``object: page``, ``data``, ``has_more``,
        ``next_page``), every bucket of the page present (an empty one has no results)."""
        width = query.width
        first = query.start // width * width if query.page is None else query.page
        starts = list(range(first, query.end, width))
        page, more = starts[:query.limit], len(starts) > query.limit
        if not page:
            return {"object": "page", "data": [], "has_more": False, "next_page": None}
        tallies = await self.buckets(width, page[0], page[-1] + width, query.key)
        grouped: dict[int, dict[tuple[str, ...], list[float]]] = {at: {} for at in page}
        for tally in tallies:
            if tally.start not in grouped or (query.models is not None and tally.dims[1] not in query.models):
                continue
            group = tuple(tally.dims[DIMENSIONS.index(g)] for g in query.group_by)
            _add_into(grouped[tally.start], group, tally.counts)
        data = [{"object": "bucket", "start_time": at, "end_time": at + width,
                 "results": [result(dict(zip(query.group_by, group, strict=True)), counts)
                             for group, counts in sorted(grouped[at].items())]} for at in page]
        return {"object": "page", "data": data, "has_more": more,
                "next_page": f"page_{starts[query.limit]}" if more else None}


def result(group: Mapping[str, str], counts: Iterable[float]) -> dict[str, Any]:
    """One result of a bucket: its group's dimensions (null where not grouped by), its counts."""
    c = dict(zip(COUNTERS, counts, strict=True))
    requests = c["requests"]
    out: dict[str, Any] = {"object": "gateway.usage.result"}
    for dim in DIMENSIONS:
        value = group.get(dim)
        if dim == "batch" and value is not None:
            out[dim] = value == "1"
        else:
            out[dim] = (value or None) if value is not None else None
    out.update({
        "num_model_requests": int(requests),
        "input_tokens": round(c["input_tokens"]),
        "output_tokens": round(c["output_tokens"]),
        "estimated_requests": int(c["estimated_requests"]),
        "cached_requests": int(c["cached_requests"]),
        "error_requests": int(c["error_requests"]),
        "runtime_seconds": round(c["runtime_seconds"], 3),
        "latency_ms_mean": round(c["latency_seconds"] / requests * 1000, 1) if requests else None,
        "ttft_ms_mean": round(c["ttft_seconds"] / c["ttft_requests"] * 1000, 1) if c["ttft_requests"] else None,
        "cost": round(c["cost"], 6) if c["priced_requests"] else None,
    })
    return out


def month_window(now: float) -> tuple[int, float]:
    """(start of this UTC month, start of the next) in epoch seconds."""
    t = time.gmtime(now)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return start, float(calendar.timegm((year, month, 1, 0, 0, 0)))


def parse_query(params: Mapping[str, list[str]], now: float) -> UsageQuery:
    """``GET /v1/usage``'s parameters (as OpenAI's usage API names them); a bad one is a 400 naming it."""

    def one(name: str) -> str | None:
        values = params.get(name) or []
        return values[-1] if values else None

    width_name = one("bucket_width") or "1d"
    if width_name not in WIDTHS:
        raise _bad("bucket_width", f"must be one of {', '.join(WIDTHS)}, not '{width_name[:20]}'")
    width = WIDTHS[width_name]
    default, most = PAGE[width]
    end = _int(one("end_time"), "end_time", int(now) + 1)
    start = _int(one("start_time"), "start_time", (end - 1) // width * width - (default - 1) * width)
    if start >= end:
        raise _bad("start_time", "must be before end_time")
    group_by = tuple(dict.fromkeys(g.strip() for value in params.get("group_by") or [] for g in value.split(",")
                                   if g.strip()))
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise _bad("group_by", f"can be {', '.join(GROUPS)}; not {', '.join(u[:30] for u in unknown)}")
    limit = _int(one("limit"), "limit", default)
    if not 1 <= limit <= most:
        raise _bad("limit", f"must be between 1 and {most} for bucket_width {width_name}")
    page = one("page")
    first: int | None = None
    if page is not None:
        try:
            first = int(page.removeprefix("page_"))
        except ValueError:
            raise _bad("page", "is not a page this endpoint gave (next_page)") from None
        if first % width or not start // width * width <= first < end:
            raise _bad("page", "is not a page of this query (next_page)")
    models = [m.strip() for value in params.get("models") or [] for m in value.split(",") if m.strip()]
    keys = [k.strip() for value in params.get("key") or [] for k in value.split(",") if k.strip()]
    if len(keys) > 1:
        raise _bad("key", "names one key")
    return UsageQuery(start, end, width, group_by, keys[0] if keys else None,
                      frozenset(models) if models else None, limit, first)


def _int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise _bad(name, "must be an integer (Unix seconds)" if name.endswith("_time") else "must be an integer") \
            from None


def _bad(param: str, why: str) -> GatewayError:
    return GatewayError(400, f"{param} {why}.", code="invalid_value", param=param)


def _add_into(table: dict[Any, list[float]], where: Any, row: Iterable[float]) -> None:
    into = table.get(where)
    if into is None:
        table[where] = list(row)
        return
    for at, value in enumerate(row):
        into[at] += value


def _rolled_up(pending: Mapping[tuple[int, tuple[str, ...]], list[float]]) -> list[Tally]:
    """Each minute's rows added into their minute, hour and day buckets."""
    table: dict[tuple[int, int, tuple[str, ...]], list[float]] = {}
    for (minute, dims), row in pending.items():
        for width in (MINUTE, HOUR, DAY):
            _add_into(table, (width, minute // width * width, dims), row)
    return [Tally(width, start, dims, tuple(row)) for (width, start, dims), row in table.items()]


def counter(name: str) -> int:
    """The position of a counter in a row (``COUNTERS``)."""
    return _AT[name]
