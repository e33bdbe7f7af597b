"""``/admin/*`` (the admin key only, checked by the middleware): reload the registry, load or unload a model now,
and the gateway's inner state (inventory, limits, breaker, residency)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from app.core.errors import GatewayError, not_in_registry
from app.core.registry import ModelEntry
from app.gateway import Gateway
from app.policy.limiter import Limiter
from app.server.context import gateway

router = APIRouter()
_NAME = Path(..., max_length=200)


@router.post("/admin/reload", summary="Reload the registry file (the last good one stays on error)")
async def reload(request: Request) -> JSONResponse:
    ok, message = gateway(request).live.reload("admin")
    if not ok:
        raise GatewayError(422, f"Registry rejected, the previous one stays in force: {message}",
                           code="invalid_registry")
    return JSONResponse({"status": "reloaded", "detail": message})


@router.post("/admin/models/{name}/load", summary="Load a registry model now")
async def load(request: Request, name: str = _NAME) -> JSONResponse:
    gw = gateway(request)
    entry = _entry(gw, name)
    _manages_models(gw)
    need = gw.inventory.ram_gb(entry)
    if need > gw.memory.budget_gb:
        raise GatewayError(409, f"Model '{entry.name}' needs {need:g} GiB; this host's budget is "
                                f"{gw.memory.budget_gb:.2f} GiB.", code="insufficient_ram")
    seconds = await gw.inventory.ensure_loaded(entry)
    return JSONResponse({"status": "loaded", "model": entry.name, "seconds": round(seconds, 3)})


@router.post("/admin/models/{name}/unload", summary="Unload a registry model now (not while it serves requests)")
async def unload(request: Request, name: str = _NAME) -> JSONResponse:
    gw = gateway(request)
    entry = _entry(gw, name)
    _manages_models(gw)
    if not gw.inventory.is_loaded(entry):
        return JSONResponse({"status": "not_loaded", "model": entry.name})
    if not await gw.inventory.unload_now(entry):
        raise GatewayError(409, f"Model '{entry.name}' is serving requests or the runtime refused; it stays loaded.",
                           code="model_busy")
    return JSONResponse({"status": "unloaded", "model": entry.name})


@router.get("/admin/cache", summary="The response cache: how much it keeps, and its entries (never their text)")
async def cache_listing(request: Request, key: str | None = Query(None, max_length=200),
                        limit: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
    cache = gateway(request).cache
    return {"stats": await cache.stats(), "key": key, "entries": await cache.listing(key, limit)}


@router.post("/admin/cache/flush", summary="Drop the response cache's answers (one team key's with ?key=)")
async def cache_flush(request: Request, key: str | None = Query(None, max_length=200)) -> dict[str, Any]:
    return {"flushed": await gateway(request).cache.flush(key), "key": key}


@router.get("/admin/status", summary="Inventory, limits and breaker state")
async def status(request: Request) -> dict[str, Any]:
    gw = gateway(request)
    managed = gw.runtime.managed
    return {
        "upstream": {"url": gw.upstream.base_url, "kind": gw.upstream.kind, "up": gw.inventory.up,
                     "ids": gw.inventory.ids, "loaded": sorted(gw.inventory.loaded), "resolved": gw.inventory.resolved},
        "memory": {"total_gb": gw.memory.total_gb, "budget_gb": gw.memory.budget_gb, "source": gw.memory.source},
        "managed": None if managed is None else {
            "pid": managed.pid, "url": managed.url, "restarts": managed.restarts,
            "restart_failures": managed.restart_failures, "running": managed.is_running,
            "serving": managed.serving, "last_error": managed.last_error or None,
        },
        "in_flight": gw.admission.overall.in_flight,
        "queued": gw.admission.overall.queued,
        "limiters": {name: _limiter_status(gw, name, limiter) for name, limiter in gw.admission.limiters.items()},
        "cooling_down": dict(gw.breaker.skipped()),
        "residency": {"running": sorted(gw.residency.running()), "turns": gw.residency.turns,
                      "waiting": {name: len(group) for name, group in gw.residency.waiting.items()},
                      "hold_s": gw.residency.hold},
    }


def _limiter_status(gw: Gateway, name: str, limiter: Limiter) -> dict[str, Any]:
    entry = gw.registry.lookup(name)
    controller = gw.admission.controller(entry) if entry is not None else None
    status: dict[str, Any] = {"limit": limiter.limit, "in_flight": limiter.in_flight, "queued": limiter.queued,
                              "queued_by_priority": limiter.queued_by_priority(),
                              "mode": "adaptive" if controller is not None else "fixed"}
    if controller is not None:
        status["bounds"] = [controller.minimum, controller.maximum]
        status["recent_decisions"] = controller.decisions
        status["measured"] = {str(limit): {"tokens_per_s": round(tp, 1), "s_per_token": round(lat, 5)}
                              for limit, (tp, lat) in controller.levels().items()}
    return status


def _manages_models(gw: Gateway) -> None:
    if gw.fleet is not None:
        raise GatewayError(409, "This is a front: load and unload on the nodes' own consoles.", code="not_supported")
    if not gw.upstream.manages_models:
        raise GatewayError(409, "This upstream does not load or unload models.", code="not_supported")


def _entry(gw: Gateway, name: str) -> ModelEntry:
    entry = gw.registry.lookup(name)
    if entry is None:
        raise not_in_registry(name)
    return entry
