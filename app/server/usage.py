"""``GET /v1/usage``: who used what, in buckets of time — OpenAI's usage API shape (a page of buckets with
``start_time``, ``end_time``, ``results``), grouped by key, model, endpoint, task, node or batch. A team key sees its
own usage only; the admin key (and callers without a team key) see everyone's, or one key's with ``?key=``. CSV
(every bucket of the range, one row per result) with ``Accept: text/csv``."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.access.usage import GROUPS, UsageBook, UsageQuery, parse_query
from app.core.errors import GatewayError, store_unavailable
from app.server.context import caller, gateway
from app.state import StoreDown

router = APIRouter()
MEASURES = ("num_model_requests", "input_tokens", "output_tokens", "estimated_requests", "cached_requests",
            "error_requests", "runtime_seconds", "latency_ms_mean", "ttft_ms_mean", "cost")


@router.get("/v1/usage", summary="Usage per key, model, endpoint, task: tokens, runtime seconds, cost, in buckets")
async def usage(request: Request) -> Response:
    gw = gateway(request)
    if gw.usage is None:
        raise GatewayError(404, "Usage is not recorded here (GATEWAY_USAGE=false).", code="usage_off")
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    query = parse_query(params, time.time())
    who = caller(request)
    if who.key is not None and not who.admin:  # a team key: its own usage, and nobody else's
        if query.key is not None and query.key != who.key.name:
            raise GatewayError(403, f"Key '{who.key.name}' may read its own usage only.", code="permission_denied",
                               param="key")
        query = replace(query, key=who.key.name)
    try:
        if "text/csv" in request.headers.get("accept", ""):
            return Response(await _csv(gw.usage, query), media_type="text/csv; charset=utf-8")
        return JSONResponse(await gw.usage.report(query))
    except StoreDown:
        raise store_unavailable() from None


async def console_usage(book: UsageBook | None, key: str | None, now: float) -> dict[str, Any] | None:
    """The console's Usage view: the last 24 hours by the hour, per key and per model (tokens, runtime seconds,
    cost), and the totals per key and model; one key's only for a team key."""
    if book is None:
        return None
    hour = 3600
    last = int(now) // hour * hour
    query = UsageQuery(last - 23 * hour, last + hour, hour, ("key", "model"), key, None, 24)
    try:
        page = await book.report(query)
    except StoreDown:
        return {"error": "the state store is unavailable"}
    hours = [bucket["start_time"] for bucket in page["data"]]
    series: dict[str, dict[str, dict[str, list[float]]]] = {"key": {}, "model": {}}
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for at, bucket in enumerate(page["data"]):
        for row in bucket["results"]:
            names = {"key": row["key"] or "(no key)", "model": row["model"] or "(none)"}
            for by, name in names.items():
                line = series[by].setdefault(name, {m: [0.0] * len(hours) for m in _CHARTED})
                for measure in _CHARTED:
                    line[measure][at] += _charted(row, measure)
            total = totals.setdefault((names["key"], names["model"]), {
                "key": names["key"], "model": names["model"], "requests": 0, "tokens": 0, "runtime_seconds": 0.0,
                "cost": None})
            total["requests"] += row["num_model_requests"]
            total["tokens"] += row["input_tokens"] + row["output_tokens"]
            total["runtime_seconds"] = round(total["runtime_seconds"] + row["runtime_seconds"], 3)
            if row["cost"] is not None:
                total["cost"] = round((total["cost"] or 0) + row["cost"], 6)
    return {"hours": hours, "by_key": series["key"], "by_model": series["model"],
            "totals": sorted(totals.values(), key=lambda t: (-t["tokens"], t["key"], t["model"]))}


_CHARTED = ("tokens", "runtime_seconds", "cost")


def _charted(row: dict[str, Any], measure: str) -> float:
    if measure == "tokens":
        return float(row["input_tokens"] + row["output_tokens"])
    return float(row[measure] or 0)


async def _csv(book: UsageBook, query: UsageQuery) -> str:
    """Every bucket of the query's range (all its pages), one row per result."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    groups = [g for g in GROUPS if g in query.group_by]
    writer.writerow(["start_time", "end_time", *groups, *MEASURES])
    page: dict[str, Any] = {"next_page": None}
    while True:
        page = await book.report(query)
        for bucket in page["data"]:
            for row in bucket["results"]:
                writer.writerow([bucket["start_time"], bucket["end_time"], *(_cell(row[g]) for g in groups),
                                 *(_cell(row[m]) for m in MEASURES)])
        if not page["has_more"]:
            return out.getvalue()
        query = replace(query, page=int(page["next_page"].removeprefix("page_")))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
