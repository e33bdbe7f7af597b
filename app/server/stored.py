"""Stored responses (``GET``/``DELETE /v1/responses/{id}``, ``…/input_items``): passed to the runtime that keeps
them, answered as it answers."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from app.core.errors import GatewayError
from app.server.context import gateway

router = APIRouter()
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
    upstream = gateway(request).upstream
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
