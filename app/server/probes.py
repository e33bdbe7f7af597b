"""Health and metrics: ``/healthz`` (liveness), ``/readyz`` (readiness, with details for the admin key),
``/metrics`` (Prometheus; its own key, checked by the middleware) and ``/v1/node`` (a node's status for its front)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.server.context import caller, gateway
from app.server.views import node_status

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers and its runtime supervisor runs")
async def healthz(request: Request) -> JSONResponse:
    if not gateway(request).healthy:
        return JSONResponse({"status": "unhealthy", "reason": "the runtime supervisor stopped"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: registry loaded and upstream serving (details with the admin key)")
async def readyz(request: Request) -> JSONResponse:
    gw = gateway(request)
    inv = gw.inventory
    ready = gw.ready
    runtime = gw.runtime
    upstream: dict[str, Any] = {"up": inv.up, "models": len(inv.ids), "loaded": sorted(inv.loaded)}
    if runtime.managed is not None:
        upstream["restarts"] = runtime.managed.restarts
    if caller(request).admin:  # where it runs and what went wrong: for operators only
        upstream["url"] = gw.upstream.base_url
        managed = runtime.managed
        upstream["error"] = (managed.last_error if managed and not managed.serving else inv.last_error) or None
    body = {
        "status": "ready" if ready else "not_ready",
        "upstream": upstream,
        "registry": {"models": len(gw.registry), "tasks": list(gw.registry.tasks), "rejected": gw.live.rejected},
        "state": {"store": gw.state.name, **gw.disk.describe()},  # full: uploads and stored responses are 507s
        "draining": gw.draining,
        "preload": {"running": runtime.preloading, "models": runtime.preload},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    data, content_type = gateway(request).metrics.render(request.headers.get("accept", ""))
    return Response(data, media_type=content_type)


@router.get("/v1/node", summary="This node's status for a front: models, loaded, limits, queues, budget")
async def node(request: Request) -> dict[str, Any]:
    return node_status(gateway(request))
