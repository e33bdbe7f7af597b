"""Stored responses (``GET``/``DELETE /v1/responses/{id}``, ``…/input_items``), served from the gateway's own
state (``app.gateway.conversations``): whichever node answered, and after any restart. A key sees only its own;
another key's id is a 404, as an unknown one is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request

from app.core.errors import GatewayError
from app.server.context import caller, gateway, listing

router = APIRouter()
_RESPONSE_ID = Path(..., max_length=200, pattern=r"^[A-Za-z0-9_:-]+$")


@router.get("/v1/responses/{response_id}", summary="A stored response (kept by the gateway, per key)")
async def get_response(request: Request, response_id: str = _RESPONSE_ID) -> dict[str, Any]:
    return (await _record(request, response_id))["response"]  # type: ignore[no-any-return]


@router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
async def delete_response(request: Request, response_id: str = _RESPONSE_ID) -> dict[str, Any]:
    if not await gateway(request).conversations.delete(response_id, caller(request)):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items", summary="A stored response's input items")
async def response_input_items(request: Request, response_id: str = _RESPONSE_ID,
                               limit: int = Query(20, ge=1, le=100), order: str = Query("desc", pattern="^(asc|desc)$"),
                               after: str | None = Query(None, max_length=200)) -> dict[str, Any]:
    """The input the response answered (the conversation before it included), paged as OpenAI pages it."""
    gw = gateway(request)
    found = await gw.conversations.input_items(response_id, caller(request), gw.settings.max_body_bytes)
    if found is None:
        raise _not_found(response_id)
    items: list[dict[str, Any]] = found
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return listing(items[:limit], len(items) > limit)


async def _record(request: Request, response_id: str) -> dict[str, Any]:
    found = await gateway(request).conversations.get(response_id, caller(request))
    if found is None:
        raise _not_found(response_id)
    return found


def _not_found(response_id: str) -> GatewayError:
    return GatewayError(404, f"No response found with id '{response_id}'.", code="not_found", param="response_id")
