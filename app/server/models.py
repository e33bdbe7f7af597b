"""``/v1/models`` (the registry's models with their task, RAM fit and the upstream's state; in front mode per
node) and ``/v1/route`` (a routing dry run: the model a request would get, and why)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from app.core.errors import not_in_registry
from app.openai import BY_NAME
from app.policy.placement import place
from app.policy.routing import latency_budget
from app.server.context import caller, gateway
from app.server.views import model_rows

router = APIRouter()
_ENDPOINTS = f"^({'|'.join(BY_NAME)})$"


@router.get("/v1/models", summary="Registry models with task, RAM fit and upstream state")
async def list_models(request: Request, task: str | None = Query(None, max_length=200)) -> dict[str, Any]:
    gw, who = gateway(request), caller(request)
    allowed = gw.access.allowed(who.key, gw.registry)  # a team key lists the models it may use
    return {"object": "list", "data": model_rows(gw, task, show_paths=who.admin, allowed=allowed)}


@router.get("/v1/models/{model_id:path}", summary="One registry model")
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    gw, who = gateway(request), caller(request)
    allowed = gw.access.allowed(who.key, gw.registry)
    entry = gw.registry.lookup(model_id)
    if entry is None or (allowed is not None and entry.name not in allowed):  # not the key's: as if not there
        raise not_in_registry(model_id)
    return next(row for row in model_rows(gw, show_paths=who.admin) if row["id"] == entry.name)


@router.get("/v1/route", summary="Routing dry-run: the model a request would get, and why")
async def route_dry_run(
    request: Request,
    task: str | None = Query(None, max_length=200),
    model: str | None = Query(None, max_length=500),
    endpoint: str = Query("chat", pattern=_ENDPOINTS, description="the endpoint the request would go to"),
    tools: bool = Query(False, description="the request carries `tools`"),
    json_schema: bool = Query(False, description="the request asks for `response_format` json_schema"),
    latency_budget_ms: float | None = Query(None, gt=0, lt=1e9, description="as the X-Latency-Budget-Ms header"),
) -> dict[str, Any]:
    gw = gateway(request)
    header_task = task if task is not None else request.headers.get(gw.settings.task_header)
    need = {BY_NAME[endpoint].capability}
    if tools:
        need.add("tools")
    if json_schema:
        need.add("json_schema")
    if latency_budget_ms is None and "x-latency-budget-ms" in request.headers:  # as the proxy reads it
        latency_budget_ms = latency_budget(request.headers["x-latency-budget-ms"])
    key = caller(request).key
    allowed = gw.access.allowed(key, gw.registry)  # the key's allow-lists, as the proxy applies them
    gw.access.check_model(key, gw.registry.lookup(model.strip()) if model else None, allowed)
    route = gw.router.route(model, header_task, frozenset(need), latency_budget_ms, allowed)
    gw.access.check_route(key, route, allowed)
    out = route.as_dict()
    if gw.fleet is not None:  # front mode: where the chosen model would run, and why each node was (not) taken
        placement = place(route.model.name, gw.fleet.views())
        out["node"] = placement.order[0] if placement.order else None
        out["nodes"] = [{"node": n, "decision": d, "reason": r} for n, d, r in placement.verdicts]
    out["upstream_id"] = gw.inventory.upstream_id(route.model)
    out["host"] = {"ram_gb": round(gw.memory.total_gb, 2), "budget_gb": round(gw.memory.budget_gb, 2),
                   "source": gw.memory.source}
    return out
