"""The HTTP API around the hot path: model listing, routing dry-run, health, metrics and admin.

These routes are FastAPI (validation, OpenAPI docs); the proxied routes are served by ``app.proxy.proxy``
before FastAPI sees them, and are declared here only so they appear in the OpenAPI document that
clients and fuzzers read. Stored responses (``/v1/responses/{id}``) are passed to the runtime that
keeps them.
"""

from __future__ import annotations

from pathlib import Path as PathLib
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Body, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from app import __version__
from app.core.errors import GatewayError
from app.core.registry import ModelEntry
from app.gateway.gateway import Gateway
from app.policy.limiter import Limiter
from app.policy.placement import place
from app.policy.routing import ENDPOINT_NEEDS, beside_pinned, latency_budget

router = APIRouter()


def _gw(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def is_admin(gw: Gateway, authorization: str | None) -> bool:
    """Whether the request carries the admin key (URLs, errors and paths are shown only then)."""
    if not gw.settings.admin_api_key:
        return False
    try:
        gw.check_key(authorization, (gw.settings.admin_api_key.encode(),))
    except GatewayError:
        return False
    return True


def model_rows(gw: Gateway, task: str | None = None, *, show_paths: bool = True) -> list[dict[str, Any]]:
    """One row per registry model: what it needs, whether it fits, and the upstream's state."""
    budget = gw.memory.budget_gb
    inv = gw.inventory
    cooling = gw.breaker.skipped()
    pinned = gw.pinned_loaded()
    rows = []
    for entry in gw.registry:
        if task and task not in entry.tasks:
            continue
        measured = inv.measured_gb(entry)
        need = inv.ram_gb(entry)
        beside = beside_pinned(entry, need, budget, pinned)
        fits = need <= budget and not beside
        available = None if inv.available is None else entry.name in inv.available
        rows.append({
            "id": entry.name,
            "object": "model",
            "created": 0,
            "owned_by": "foundry-gateway",
            "task": entry.task,
            "tasks": list(entry.tasks),
            "min_ram_gb": entry.min_ram_gb,
            "measured_ram_gb": None if measured is None else round(measured, 4),
            "ram_gb": round(need, 4),
            "fits": fits,
            "pinned": entry.pinned,
            "measured": entry.measured.raw if entry.measured else None,
            "capabilities": list(entry.capabilities),
            "fit": (f"fits ({need:.3g} ≤ {budget:.1f} GiB budget)" if fits
                    else beside or f"needs {need:.3g} GiB > {budget:.1f} GiB budget"),
            "upstream_id": inv.upstream_id(entry),
            "available": available,
            "loaded": inv.is_loaded(entry) if available else False,
            "cooling_down": entry.name in cooling,
            "concurrency_limit": gw.limiter(entry).limit,
            "in_flight": gw.limiter(entry).in_flight,
            "queued": gw.limiter(entry).queued,
            "concurrency": "adaptive" if gw.controller(entry) is not None else "fixed",
            "local_path": (str(entry.path) if entry.path else None) if show_paths else None,
            "notes": entry.notes,
        })
    return rows


def fleet_rows(gw: Gateway, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Front mode: each model's state on every node, and available/loaded where any healthy node says so."""
    assert gw.fleet is not None
    for row in rows:
        per_node = {}
        for node in gw.fleet.nodes.values():
            state = node.models.get(row["id"])
            per_node[node.name] = {"healthy": node.healthy, "available": state.available if state else None,
                                   "loaded": bool(state and state.loaded), "fits": bool(state and state.fits),
                                   "in_flight": (state.in_flight if state else 0), "queued": state.queued if state
                                   else 0, "limit": state.limit if state else 0}
        healthy = [v for v in per_node.values() if v["healthy"]]
        row["nodes"] = per_node
        row["available"] = any(v["available"] is not False for v in healthy) if healthy else False
        row["loaded"] = any(v["loaded"] for v in healthy)
    return rows


@router.get("/v1/node", summary="This node's status for a front: models, loaded, limits, queues, budget")
async def node_status(request: Request) -> dict[str, Any]:
    gw = _gw(request)
    return {"ready": gw.ready, "budget_gb": round(gw.memory.budget_gb, 3), "front": gw.fleet is not None,
            "in_flight": gw.admission.in_flight, "queued": gw.admission.queued,
            "models": model_rows(gw, show_paths=False)}


@router.get("/v1/models", summary="Registry models with task, RAM fit and upstream state")
async def list_models(request: Request, task: str | None = Query(None, max_length=200)) -> dict[str, Any]:
    gw = _gw(request)
    rows = model_rows(gw, task, show_paths=_admin_asked(gw, request))
    return {"object": "list", "data": fleet_rows(gw, rows) if gw.fleet is not None else rows}


@router.get("/v1/models/{model_id:path}", summary="One registry model")
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    gw = _gw(request)
    entry = gw.registry.lookup(model_id)
    if entry is None:
        raise GatewayError(404, f"Model '{model_id}' is not in the registry.", code="model_not_found", param="model")
    rows = model_rows(gw, show_paths=_admin_asked(gw, request))
    if gw.fleet is not None:
        rows = fleet_rows(gw, rows)
    return next(row for row in rows if row["id"] == entry.name)


@router.get("/v1/route", summary="Routing dry-run: the model a request would get, and why")
async def route_dry_run(
    request: Request,
    task: str | None = Query(None, max_length=200),
    model: str | None = Query(None, max_length=500),
    endpoint: Literal["chat", "completions", "responses", "embeddings", "transcriptions"] = Query(
        "chat", description="the endpoint the request would go to"),
    tools: bool = Query(False, description="the request carries `tools`"),
    json_schema: bool = Query(False, description="the request asks for `response_format` json_schema"),
    latency_budget_ms: float | None = Query(None, gt=0, lt=1e9, description="as the X-Latency-Budget-Ms header"),
) -> dict[str, Any]:
    gw = _gw(request)
    header_task = task if task is not None else request.headers.get(gw.settings.task_header)
    need = {ENDPOINT_NEEDS[endpoint]}
    if tools:
        need.add("tools")
    if json_schema:
        need.add("json_schema")
    if latency_budget_ms is None and "x-latency-budget-ms" in request.headers:  # as the proxy reads it
        latency_budget_ms = latency_budget(request.headers["x-latency-budget-ms"])
    route = gw.route(model, header_task, frozenset(need), latency_budget_ms)
    out = route.as_dict()
    if gw.fleet is not None:  # front mode: where the chosen model would run, and why each node was (not) taken
        placement = place(route.model.name, gw.fleet.views())
        out["node"] = placement.order[0] if placement.order else None
        out["nodes"] = [{"node": n, "decision": d, "reason": r} for n, d, r in placement.verdicts]
    out["upstream_id"] = gw.inventory.upstream_id(route.model)
    out["host"] = {"ram_gb": round(gw.memory.total_gb, 2), "budget_gb": round(gw.memory.budget_gb, 2),
                   "source": gw.memory.source}
    return out


@router.get("/healthz", summary="Liveness: the process answers and its runtime supervisor runs")
async def healthz(request: Request) -> JSONResponse:
    if not _gw(request).healthy:
        return JSONResponse({"status": "unhealthy", "reason": "the runtime supervisor stopped"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: registry loaded and upstream serving (details with the admin key)")
async def readyz(request: Request) -> JSONResponse:
    gw = _gw(request)
    inv = gw.inventory
    ready = gw.ready
    upstream: dict[str, Any] = {"up": inv.up, "models": len(inv.ids), "loaded": sorted(inv.loaded)}
    if gw.managed is not None:
        upstream["restarts"] = gw.managed.restarts
    if _admin_asked(gw, request):  # where it runs and what went wrong: for operators only
        upstream["url"] = gw.upstream.base_url
        upstream["error"] = (gw.managed.last_error if gw.managed and not gw.managed.serving else inv.last_error) or None
    body = {
        "status": "ready" if ready else "not_ready",
        "upstream": upstream,
        "registry": {"models": len(gw.registry), "tasks": list(gw.registry.tasks)},
        "draining": gw.draining,
        "preload": {"running": gw.preloading, "models": gw.preload},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _admin_asked(gw: Gateway, request: Request) -> bool:
    return is_admin(gw, request.headers.get("authorization"))


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request, authorization: str | None = Header(None)) -> Response:
    gw = _gw(request)
    if gw.settings.metrics_api_key:
        gw.check_key(authorization, (gw.settings.metrics_api_key.encode(),))
    data, content_type = gw.metrics.render()
    return Response(data, media_type=content_type)


def _admin(request: Request, authorization: str | None) -> Gateway:
    gw = _gw(request)
    if not gw.settings.admin_api_key:
        raise GatewayError(403, "Admin routes are disabled: set GATEWAY_ADMIN_API_KEY.", code="admin_disabled")
    gw.check_key(authorization, (gw.settings.admin_api_key.encode(),))
    return gw


@router.post("/admin/reload", summary="Reload the registry file (the last good one stays on error)")
async def admin_reload(request: Request, authorization: str | None = Header(None)) -> JSONResponse:
    gw = _admin(request, authorization)
    ok, message = gw.reload_registry("admin")
    if not ok:
        raise GatewayError(422, f"Registry rejected, the previous one stays in force: {message}",
                           code="invalid_registry")
    return JSONResponse({"status": "reloaded", "detail": message})


@router.post("/admin/models/{name}/load", summary="Load a registry model now")
async def admin_load(request: Request, name: str = Path(..., max_length=200),
                     authorization: str | None = Header(None)) -> JSONResponse:
    gw = _admin(request, authorization)
    entry = _registry_entry(gw, name)
    _manages_models(gw)
    if gw.inventory.ram_gb(entry) > gw.memory.budget_gb:
        raise GatewayError(409, f"Model '{entry.name}' needs {gw.inventory.ram_gb(entry):g} GiB; this host's budget "
                                f"is {gw.memory.budget_gb:.2f} GiB.", code="insufficient_ram")
    seconds = await gw.inventory.ensure_loaded(entry)
    return JSONResponse({"status": "loaded", "model": entry.name, "seconds": round(seconds, 3)})


@router.post("/admin/models/{name}/unload", summary="Unload a registry model now (not while it serves requests)")
async def admin_unload(request: Request, name: str = Path(..., max_length=200),
                       authorization: str | None = Header(None)) -> JSONResponse:
    gw = _admin(request, authorization)
    entry = _registry_entry(gw, name)
    _manages_models(gw)
    if not gw.inventory.is_loaded(entry):
        return JSONResponse({"status": "not_loaded", "model": entry.name})
    if not await gw.inventory.unload_now(entry):
        raise GatewayError(409, f"Model '{entry.name}' is serving requests or the runtime refused; it stays loaded.",
                           code="model_busy")
    return JSONResponse({"status": "unloaded", "model": entry.name})


def _manages_models(gw: Gateway) -> None:
    if gw.fleet is not None:
        raise GatewayError(409, "This is a front: load and unload on the nodes' own consoles.", code="not_supported")
    if not gw.upstream.manages_models:
        raise GatewayError(409, "This upstream does not load or unload models.", code="not_supported")


def _registry_entry(gw: Gateway, name: str) -> ModelEntry:
    entry = gw.registry.lookup(name)
    if entry is None:
        raise GatewayError(404, f"Model '{name}' is not in the registry.", code="model_not_found", param="model")
    return entry


@router.get("/v1/console", summary="Everything the console (/ui) and `foundry-gateway status` show")
async def console_state(request: Request) -> dict[str, Any]:
    """The host's RAM budget and what uses it, the models, the last minutes of traffic, the last routing
    decisions (never prompt text) and, in front mode, the nodes."""
    gw = _gw(request)
    rows = model_rows(gw, show_paths=False)
    if gw.fleet is not None:
        rows = fleet_rows(gw, rows)
    loaded = [{"model": r["id"], "ram_gb": r["ram_gb"], "measured": r["measured_ram_gb"] is not None}
              for r in rows if r["loaded"]]
    nodes = None
    if gw.fleet is not None:
        nodes = [{"node": n.name, "healthy": n.healthy, "why_down": n.why_down or None,
                  "loaded": sorted(m for m, s in n.models.items() if s.loaded),
                  "in_flight": sum(s.in_flight for s in n.models.values()),
                  "queued": sum(s.queued for s in n.models.values())} for n in gw.fleet.nodes.values()]
    return {
        "version": __version__, "ready": gw.ready, "admin": bool(gw.settings.admin_api_key),
        "host": {"total_gb": round(gw.memory.total_gb, 2), "budget_gb": round(gw.memory.budget_gb, 2),
                 "source": gw.memory.source, "loaded": loaded},
        "models": rows, "traffic": gw.recent.series(), "decisions": list(reversed(gw.recent.decisions)),
        "nodes": nodes,
    }


@router.get("/ui", include_in_schema=False)
async def console_page() -> Response:
    return Response(_CONSOLE.read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"cache-control": "no-cache"})


_CONSOLE = PathLib(__file__).parent / "static" / "console.html"


@router.get("/admin/status", summary="Inventory, limits and breaker state")
async def admin_status(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
    gw = _admin(request, authorization)
    return {
        "upstream": {"url": gw.upstream.base_url, "kind": gw.upstream.kind, "up": gw.inventory.up,
                     "ids": gw.inventory.ids, "loaded": sorted(gw.inventory.loaded), "resolved": gw.inventory.resolved},
        "memory": {"total_gb": gw.memory.total_gb, "budget_gb": gw.memory.budget_gb, "source": gw.memory.source},
        "managed": None if gw.managed is None else {
            "pid": gw.managed.pid, "url": gw.managed.url, "restarts": gw.managed.restarts,
            "restart_failures": gw.managed.restart_failures, "running": gw.managed.is_running,
            "serving": gw.managed.serving, "last_error": gw.managed.last_error or None,
        },
        "in_flight": gw.admission.in_flight,
        "queued": gw.admission.queued,
        "limiters": {name: _limiter_status(gw, name, limiter) for name, limiter in gw.limiters.items()},
        "cooling_down": dict(gw.breaker.skipped()),
        "residency": {"running": sorted(gw.residency.running()), "turns": gw.residency.turns,
                      "waiting": {name: len(group) for name, group in gw.residency.waiting.items()},
                      "hold_s": gw.residency.hold},
    }


def _limiter_status(gw: Gateway, name: str, limiter: Limiter) -> dict[str, Any]:
    entry = gw.registry.lookup(name)
    controller = gw.controller(entry) if entry is not None else None
    status: dict[str, Any] = {"limit": limiter.limit, "in_flight": limiter.in_flight, "queued": limiter.queued,
                              "queued_by_priority": limiter.queued_by_priority(),
                              "mode": "adaptive" if controller is not None else "fixed"}
    if controller is not None:
        status["bounds"] = [controller.minimum, controller.maximum]
        status["recent_decisions"] = controller.decisions
        status["measured"] = {str(limit): {"tokens_per_s": round(tp, 1), "s_per_token": round(lat, 5)}
                              for limit, (tp, lat) in controller.levels().items()}
    return status


# --- declared for the OpenAPI document; served by app.proxy.proxy ------------------------------------------

_CHAT_EXAMPLE = {"model": "auto", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}
_COMPLETION_EXAMPLE = {"model": "auto", "prompt": "Say hello", "max_tokens": 32}
_TASK_DOC = "Task used to pick a model when `model` is `auto` or absent (e.g. chat, code)."


@router.post("/v1/chat/completions", summary="OpenAI chat completions, routed by task and RAM")
async def chat_completions(
    body: dict[str, Any] = Body(..., examples=[_CHAT_EXAMPLE]),
    x_task: str | None = Header(None, description=_TASK_DOC),
) -> dict[str, Any]:
    raise GatewayError(500, "served by the proxy")  # pragma: no cover


@router.post("/v1/completions", summary="OpenAI completions (translated to chat for Foundry Local)")
async def completions(
    body: dict[str, Any] = Body(..., examples=[_COMPLETION_EXAMPLE]),
    x_task: str | None = Header(None, description=_TASK_DOC),
) -> dict[str, Any]:
    raise GatewayError(500, "served by the proxy")  # pragma: no cover



_RESPONSE_EXAMPLE = {"model": "auto", "input": "Say hello", "max_output_tokens": 32}
_EMBEDDING_EXAMPLE = {"model": "auto", "input": ["first text", "second text"]}


@router.post("/v1/responses", summary="The Responses API (JSON or typed events), routed like chat")
async def responses(
    body: dict[str, Any] = Body(..., examples=[_RESPONSE_EXAMPLE]),
    x_task: str | None = Header(None, description=_TASK_DOC),
) -> dict[str, Any]:
    raise GatewayError(500, "served by the proxy")  # pragma: no cover


@router.post("/v1/embeddings", summary="Embeddings (float or base64), routed to embedding models")
async def embeddings(body: dict[str, Any] = Body(..., examples=[_EMBEDDING_EXAMPLE])) -> dict[str, Any]:
    raise GatewayError(500, "served by the proxy")  # pragma: no cover


@router.post("/v1/audio/transcriptions", summary="Speech to text, routed to transcription models")
async def transcriptions(
    file: UploadFile = File(..., description="the audio"),
    model: str = Form("auto"),
    language: str | None = Form(None),
    response_format: Literal["json", "text"] = Form("json"),
) -> dict[str, Any]:
    raise GatewayError(500, "served by the proxy")  # pragma: no cover


# --- stored responses: kept by the runtime that answered ---------------------------------------------------

_RESPONSE_ID = Path(..., max_length=200, pattern=r"^[A-Za-z0-9_:-]+$")


@router.get("/v1/responses/{response_id}", summary="A stored response (kept by Foundry Local while it runs)")
async def get_response(request: Request, response_id: str = _RESPONSE_ID) -> Response:
    return await _stored(request, "GET", response_id)


@router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
async def delete_response(request: Request, response_id: str = _RESPONSE_ID) -> Response:
    return await _stored(request, "DELETE", response_id)


@router.get("/v1/responses/{response_id}/input_items", summary="A stored response's input items")
async def response_input_items(request: Request, response_id: str = _RESPONSE_ID) -> Response:
    return await _stored(request, "GET", f"{response_id}/input_items")


async def _stored(request: Request, method: str, path: str) -> Response:
    """The runtime's answer as it is (API keys were checked for every /v1 route before this)."""
    upstream = _gw(request).upstream
    try:
        answer = await upstream.client.request(method, f"{upstream.urls['responses']}/{path}",
                                               headers=upstream.headers, timeout=upstream.quick_timeout)
    except httpx.HTTPError as exc:
        raise GatewayError(503, f"The upstream is unreachable: {exc.__class__.__name__}",
                           code="upstream_unavailable") from None
    if not answer.headers.get("content-type", "").startswith("application/json"):
        raise GatewayError(answer.status_code if answer.status_code >= 400 else 502,
                           f"The upstream answered {answer.status_code} without JSON for /v1/responses/{path}.",
                           code="upstream_error")
    return Response(answer.content, status_code=answer.status_code, media_type="application/json")
